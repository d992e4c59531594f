"""Helpers of the deployment tests (tests/test_deploy_*.py)."""
