"""`compile`: torch.compile of the network a run trains (training, validation and test).

`false` (the default), `true`, or a mapping of torch.compile's own arguments, e.g.
`compile={mode: max-autotune}` or `compile={dynamic: true}`. The network's forward is compiled in
place (`nn.Module.compile`), so checkpoints keep the plain weight names and load anywhere
uncompiled. Freezing or unfreezing groups mid-run (gradual, phases) recompiles once per change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError

# torch.compile's keyword arguments (torch 2.x)
ARGUMENTS = ("fullgraph", "dynamic", "backend", "mode", "options", "disable")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_arguments(value: Any) -> dict[str, Any] | None:
    """`compile` as torch.compile's keyword arguments; None: off. Checked without torch."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        args = dict(value)
        unknown = sorted(set(args) - set(ARGUMENTS))
        if unknown:
            raise ConfigError(
                f"compile.{unknown[0]} is not an argument of torch.compile; valid: "
                f"{', '.join(ARGUMENTS)}"
            )
        mode = args.get("mode")
        if mode is not None and mode not in MODES:
            raise ConfigError(f"compile.mode={mode!r} is invalid; valid: {', '.join(MODES)}")
        return args
    raise ConfigError(
        f"compile={value!r} is invalid: false, true, or a mapping of torch.compile's arguments "
        "(e.g. compile={mode: max-autotune})"
    )


def compile_network(network: Any, value: Any) -> bool:
    """Compile `network`'s forward in place as `compile` says; whether it did."""
    args = compile_arguments(value)
    if args is None:
        return False
    network.compile(**args)
    return True
