"""The `onnxplain` command line (click): thin commands that parse, call the library, print or write."""
