"""migration_encoding: COPY's text format, and how a value is shown in a report."""

from ansible_collections.claude_kit.stack.plugins.module_utils import migration_encoding as me


def test_show_value_truncates():
    assert me.show_value("x" * 500).endswith("...")
    assert len(me.show_value("x" * 500)) == me.REJECT_VALUE_CHARS
    assert me.show_value(bytearray(b"\xff")) == "b'\\xff'"


def test_show_value_shows_utf8_text_read_as_bytes_as_text():
    # SQLite TEXT read byte-preserving (a bytearray, after a batch with bytes that are not UTF-8):
    # valid UTF-8 is text, so it is shown as text; only the bytes that are not UTF-8 keep b'...'.
    assert me.show_value(bytearray(b"lots")) == "'lots'"
    assert me.show_value(bytearray("café".encode())) == "'café'"
    assert me.show_value(bytearray(b"caf\xe9")) == "b'caf\\xe9'"
    assert me.show_value(b"lots") == "b'lots'"  # a BLOB stays bytes
    assert me.show_value(bytearray(b"y" * 500)) == me.show_value("y" * 500)


def test_escape_column_matches_copy_escape():
    texts = ["a\tb\\c\nd", "plain", "\x0b\x08\x0c\r", "", "\\\\n"]
    assert me.escape_column(texts) == [me.copy_escape(t) for t in texts]


def test_copy_escape_round_trip_and_null():
    text = "a\tb\nc\\d\re\bf\fg\vh"
    assert me.copy_unescape(me.copy_escape(text)) == text
    assert me.copy_unescape(me.NULL) is None
    assert me.copy_escape("plain") == "plain"


def test_copy_data():
    assert me.copy_data(["1\ta", "2\tb"]) == b"1\ta\n2\tb\n"
    assert me.copy_data([]) == b""
    assert me.copy_data(["ü"]) == "ü\n".encode("utf-8")


def test_the_digest_escapes_what_copy_escapes():
    # migration_digest builds the same escapes in SQL from ESCAPE_PAIRS, backslash first.
    assert me.ESCAPE_PAIRS[0] == ("\\", "\\\\")
    text = "\\\n\r\t\b\f\v"
    replaced = text
    for raw, escaped in me.ESCAPE_PAIRS:
        replaced = replaced.replace(raw, escaped)
    assert replaced == me.copy_escape(text)
