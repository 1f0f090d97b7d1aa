"""The data path, in packages whose imports run one way (see docs/architecture.md):
`imaging` <- `archive` <- `colorize` <- `review` <- `training`."""
