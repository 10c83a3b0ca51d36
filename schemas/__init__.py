"""The JSON schemas of memoir's formats, shipped inside the package as `memoir_cli.schemas`.

The folder sits at the top of the repository, where readers look for a project's formats;
pyproject.toml maps it into the package, so an installed wheel reads it with `importlib.resources`,
with no copy and no symlink; a source checkout reads its own folder (facts.load_schema).
"""
