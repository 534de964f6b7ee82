"""The model as a graph of tensor operations, traced once with ``torch.fx``.

The public face of two modules: :mod:`~fgcam_lib.engine.dag` holds the :class:`Graph` (nodes
in topological order, names, structure queries) and :mod:`~fgcam_lib.engine.tracing` builds
it (the fx trace or the flat chain, leaf modules, the per-model cache). Node ``i`` has id
``i``; the input image has id ``INPUT`` (-1).

    >>> g = graph_of(torchvision.models.resnet18())
    >>> g.name(g.position("layer4")), g.name(g.default_component_layer())
    ('layer4', 'layer4')
"""
from __future__ import annotations

from .dag import INPUT, Graph, Node, run_shapes
from .tracing import LEAVES, chain_graph, fx_graph, graph_of, register_leaf

__all__ = ["INPUT", "Node", "Graph", "run_shapes", "graph_of", "fx_graph", "chain_graph", "LEAVES", "register_leaf"]
