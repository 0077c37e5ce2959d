# The two commands a newcomer needs: `make demo` and `make test`.
.PHONY: test demo build bench-decode clean

build:
	cargo build --release

test:
	scripts/test.sh

demo:
	scripts/demo.sh

bench-decode:
	bench/decode.sh

clean:
	cargo clean
	rm -rf .tmp
