"""Where asset values live between steps: pickles under OVERSEER_HOME, with nothing about it made public.

Dagster's default filesystem IO manager adds a `path` metadata entry (a local filesystem path) to
every materialization that returns a value, and logs that path. This one stores the same way and
publishes nothing: no metadata, no path in log lines or error messages.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import dagster as dg

from overseer_dagster.store.db import overseer_home

_FOLDER = "asset_values"


class PrivateValueIOManager(dg.ConfigurableIOManager):
    """Pickled asset values under `base_dir` (empty: OVERSEER_HOME/asset_values), keyed by asset key."""

    base_dir: str = ""

    def _root(self) -> Path:
        return Path(self.base_dir) if self.base_dir else overseer_home() / _FOLDER

    def _parts(self, context: dg.OutputContext | dg.InputContext) -> list[str]:
        if context.has_asset_key:
            return list(context.asset_key.path)
        if isinstance(context, dg.InputContext):
            assert context.upstream_output is not None
            return self._parts(context.upstream_output)
        return [context.run_id, context.step_key, context.name]

    def _file(self, context: dg.OutputContext | dg.InputContext) -> Path:
        return self._root().joinpath(*self._parts(context)).with_suffix(".pickle")

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is None:
            return
        target = self._file(context)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)

    def load_input(self, context: dg.InputContext) -> object:
        try:
            with self._file(context).open("rb") as f:
                return pickle.load(f)  # noqa: S301 - our own values, written by handle_output above
        except FileNotFoundError:
            what = "/".join(self._parts(context)) if context.has_asset_key else "an upstream output"
            raise dg.Failure(f"no stored value for {what}: materialize it first") from None
