# Convenience targets; each is a thin wrapper around ./kit (which works without
# make, as on a fresh Debian machine).
.PHONY: deploy test lint unit sanity units collection-test molecule lab-up lab-down bootstrap

deploy:
	./kit deploy

test:
	./kit test

lint:
	./kit lint

unit:
	./kit unit

sanity:
	./kit ansible-test sanity

units:
	./kit ansible-test units

collection-test:
	./kit collection-test

molecule:
	./kit molecule

lab-up:
	./kit lab-up

lab-down:
	./kit lab-down

bootstrap:
	./kit bootstrap
