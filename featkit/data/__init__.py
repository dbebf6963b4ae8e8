"""The hot path from files to pixels: listing inputs, safe decoding (skip and record), crops, the parallel loader."""
