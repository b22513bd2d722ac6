"""The site's own benchmark: `make bench` (bench/README.md)."""
