"""casckpt inside training frameworks: each module imports its framework (install it yourself)."""
