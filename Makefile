# The two commands a newcomer needs: `make demo` and `make test`.
.PHONY: test test-matrix demo build bench-decode clean

build:
	cargo build --release

test:
	scripts/test.sh

test-matrix:
	WALY_PG_MAJORS="15 16 17 18" scripts/test.sh

demo:
	scripts/demo.sh

bench-decode:
	bench/decode.sh

clean:
	cargo clean
	rm -rf .tmp
