"""Tests of the deployment manifests under deploy/."""
