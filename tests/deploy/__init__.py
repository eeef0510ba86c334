"""Deployment artefacts checked for real: manifests, images and their dependencies, observability."""
