"""The test suite (a package, so that runs can name ``tests.helpers`` classes)."""
