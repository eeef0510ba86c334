"""Parsing job YAML without letting aliases multiply it: a few hundred bytes of anchors and aliases can
stand for millions of nodes (an "alias bomb"), which later validation, error messages or a JSON dump
would expand in full. The document's expanded size is counted on the composed node graph, where
aliases are still shared, before anything is built from it.
"""

from __future__ import annotations

from typing import Any

import yaml

# A job spec has about a hundred nodes; ten thousand leaves room for long lists and refuses bombs.
MAX_NODES = 10_000


class YamlLimitError(ValueError):
    """A YAML document that expands beyond MAX_NODES nodes, or refers to itself."""


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in the document with every alias expanded, counting at most a little past `limit`."""
    sizes: dict[int, int] = {}
    # Iterative post-order walk: nesting depth must not turn into Python recursion.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        items = (
            node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        )
        if children_done:
            open_nodes.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(child)] for child in items))
            continue
        if key in open_nodes:
            raise YamlLimitError("the YAML refers to itself through an alias")
        open_nodes.add(key)
        stack.append((node, True))
        for child in items:
            if id(child) in open_nodes:
                raise YamlLimitError("the YAML refers to itself through an alias")
            stack.append((child, False))
    return sizes[id(root)]


def load_yaml(text: str, max_nodes: int = MAX_NODES) -> Any:
    """yaml.safe_load, refusing documents whose aliases expand past `max_nodes` nodes."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, max_nodes) > max_nodes:
            raise YamlLimitError(f"the YAML expands to more than {max_nodes} nodes (through aliases)")
        return loader.construct_document(node)
    finally:
        loader.dispose()
