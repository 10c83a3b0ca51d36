"""The JSON schemas of memoir's formats, shipped inside the package as `memoir_cli.schemas`.

The folder sits at the top of the repository, where readers look for a project's formats;
pyproject.toml maps it into the package, so it is read with `importlib.resources` wherever the
package is installed (wheel, sdist, editable), with no copy and no symlink.
"""
