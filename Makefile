# Convenience targets; each is a thin wrapper around ./kit (which works without
# make, as on a fresh Debian machine).
.PHONY: deploy test lint unit molecule lab-up lab-down bootstrap

deploy:
	./kit deploy

test:
	./kit test

lint:
	./kit lint

unit:
	./kit unit

molecule:
	./kit molecule

lab-up:
	./kit lab-up

lab-down:
	./kit lab-down

bootstrap:
	./kit bootstrap
