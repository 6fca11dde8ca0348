"""Reference solutions exported by `python -m utils.build` from `solutions/`; do not edit."""
