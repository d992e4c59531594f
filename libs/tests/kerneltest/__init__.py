"""A test-only echo service built with the kernel (proto compiled at test time)."""
