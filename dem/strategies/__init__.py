"""Drop a module here with an `@register(...)`-decorated function and it becomes a merge strategy
(`dem.merge=<name>`); dem/merge.py imports every module in this folder. See the README's worked example."""
