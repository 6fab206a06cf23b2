"""``export()`` that writes MXNet's built-in operators unless the fused operator is asked for.

A graph that holds ``gluon_losses_softmax_ce`` loads only where this package's library is
registered; a deployment host usually has stock MXNet alone. So a loss whose cached
graph runs on the fused operator exports the same loss rebuilt from MXNet's own
operators (the graph :func:`gluon_losses.softmax_ce.weighted_softmax_ce` builds, the one
``fused=False`` trains with), and embedding the fused node is an explicit choice.
"""
import mxnet as mx

from .checks import check_bool
from .mxnet_internals import averaged_value, built_graph, registered_parameters

__all__ = ["PortableExport"]


class PortableExport:
    """Mixin for a loss with a fused path (``self._use_fused``, and
    ``self._graph_wraps_input`` for its graph's input); put it first in the bases."""

    def export(self, path, epoch=0, remove_amp_cast=True, fused=False):
        """Write ``path-symbol.json`` and ``path-%04d.params`` (epoch), as
        ``HybridBlock.export`` does.

        ``fused=False`` (default): a graph of MXNet's built-in operators, loadable by stock
        MXNet 1.9.1 without this package, whichever path trained the loss. ``fused=True``:
        the graph as it runs, with the fused operator's node; loading it needs the
        operator's library registered first (``import gluon_losses``, or
        ``mx.library.load`` of the file ``gluon_losses.fused.library_path()`` names, see
        docs/deploy.md). It raises a ValueError when the loss did not run on the fused
        operator.
        """
        fused = check_bool("fused", fused)
        if fused and not self._use_fused:
            raise ValueError("export(fused=True) needs a loss whose graph ran on the fused "
                             "operator, but this one runs on the MXNet-operator graph; "
                             "export with fused=False")
        if not built_graph(self) or not self._use_fused:
            return super().export(path, epoch, remove_amp_cast)  # the graph as it ran
        inputs, _ = built_graph(self)
        params = {name: param.var() for name, param in registered_parameters(self).items()}
        # hybrid_forward builds the graph of the path asked for; a fused node takes pred
        # through identity, whoever loads the graph (see fused.composed_input)
        wraps = self._graph_wraps_input
        self._use_fused, self._graph_wraps_input = fused, True
        try:
            with self.name_scope():
                graph = self.hybrid_forward(mx.sym, *inputs, **params)
        finally:
            self._use_fused, self._graph_wraps_input = True, wraps
        graph.save("%s-symbol.json" % path, remove_amp_cast=remove_amp_cast)
        arguments = set(graph.list_arguments())
        mx.nd.save("%s-%04d.params" % (path, epoch),
                   {"arg:" + param.name: averaged_value(param)
                    for param in registered_parameters(self).values()
                    if param.name in arguments})
