"""Example job specs, shipped inside the package so that `asympo demo` finds its job from an installed wheel.

In a checkout they are also at examples/jobs/ (a link to this folder): copy one to start a job of your own.
"""
