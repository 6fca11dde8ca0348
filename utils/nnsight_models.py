"""nnsight models: the same experiments on this machine, in a rehearsal of a remote run, or on NDIF.

`load_model()` gives a TransformerLens bridge; this module gives the nnsight view of the same
weights, for models too large for one machine. Three places a trace can run, chosen by one
argument, `remote`:

- `remote=False`: here, on the model's weights (the organism, a local folder, a cached Hub model);
- `remote="local"`: here, but as NDIF would run it: the request is serialised, rebuilt with this
  project's modules hidden, run on copies, and only saved values come back (`RehearsalBackend`);
- `remote=True`: on NDIF (https://ndif.us), for a Hub model it hosts, with an NDIF API key.

Hook names stay the workbook's (`blocks.1.hook_resid_post`); `HOOKS` translates them into
nnsight module paths (`transformer.h.1`, its output), and `read_activation` reads one inside a
trace. Offline, or without a key, `remote=True` fails within a couple of seconds with one line
that says why, never a hang.
"""

from __future__ import annotations

import io
import linecache
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch

from utils.models import (ORGANISM_DIR, ORGANISM_NAMES, ModelUnavailableError, _cached_snapshot, hub_is_reachable,
                          official_hub_name, quiet_transformers, resolve_device)

NDIF_KEY_HELP = ("sign up at https://login.ndif.us for a key and set it as the NDIF_API_KEY environment variable "
                 "(on Colab: a secret named NDIF_API_KEY)")
STATUS_TIMEOUT = 5.0  # seconds we wait for NDIF's own status check before giving up


class NdifUnavailableError(ModelUnavailableError):
    """A remote run cannot start: offline, no API key, NDIF unreachable, or the model not running there."""


# --------------------------------------------------------------------------------------------
# Loading


def _offline_flag() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def ndif_host() -> str:
    """The NDIF address nnsight will use: NDIF_HOST if set, else nnsight's configured host."""
    if os.environ.get("NDIF_HOST"):
        return os.environ["NDIF_HOST"]
    from nnsight import CONFIG

    return CONFIG.API.HOST


def ndif_api_key() -> str | None:
    """The NDIF API key: NDIF_API_KEY, else the one nnsight found (its config file or a Colab secret)."""
    if os.environ.get("NDIF_API_KEY"):
        return os.environ["NDIF_API_KEY"]
    from nnsight import CONFIG

    return CONFIG.API.APIKEY or None


def _answers_within(function: Callable[[], Any], seconds: float) -> tuple[bool, Any]:
    """Run `function` in a daemon thread; (True, its result) if it returned in time, else (False, None).

    An exception inside counts as an answer and is returned as the result.
    """
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(function())
        except Exception as error:  # noqa: BLE001 - handed back to the caller
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return (True, outcome[0]) if outcome else (False, None)


def ndif_is_reachable(timeout: float = 1.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the NDIF host does not accept a connection within `timeout` s."""
    if _offline_flag():
        return False
    address = urlparse(ndif_host())
    port = address.port or (443 if address.scheme == "https" else 80)

    def connect() -> bool:
        with socket.create_connection((address.hostname, port), timeout=timeout):
            return True

    answered, result = _answers_within(connect, timeout)  # name lookups ignore socket timeouts
    return answered and result is True


def check_ndif(repo_id: str, timeout: float = STATUS_TIMEOUT) -> None:
    """Raise NdifUnavailableError (one line) unless `repo_id` can run on NDIF now.

    Checks, cheapest first: the offline flag, an API key, the Hub, the NDIF host, and last
    nnsight's own `is_model_running`, behind our `timeout` so a slow service cannot hang a cell.
    """
    if _offline_flag():
        raise NdifUnavailableError("remote=True needs the network, and HF_HUB_OFFLINE is set (offline): "
                                   "use remote='local' to rehearse the same trace on this machine")
    if not ndif_api_key():
        raise NdifUnavailableError(f"remote=True needs an NDIF API key: {NDIF_KEY_HELP}; "
                                   "meanwhile remote='local' rehearses the same trace here")
    if not hub_is_reachable():
        raise NdifUnavailableError("remote=True needs the Hugging Face Hub (for the model's config), which is "
                                   "not reachable from here (offline): use remote='local' to rehearse")
    if not ndif_is_reachable():
        raise NdifUnavailableError(f"NDIF at {ndif_host()} is not reachable from here (offline, or the service "
                                   "is down): use remote='local' to rehearse, or try again later")
    import nnsight

    # nnsight read NDIF_API_KEY and NDIF_HOST when it was imported; a key set later must reach it too.
    nnsight.CONFIG.API.APIKEY, nnsight.CONFIG.API.HOST = ndif_api_key(), ndif_host()
    answered, running = _answers_within(lambda: nnsight.is_model_running(repo_id), timeout)
    if not answered:
        raise NdifUnavailableError(f"NDIF's status check for {repo_id!r} did not answer within {timeout:g}s: "
                                   "try again later")
    if isinstance(running, Exception):
        raise NdifUnavailableError(f"NDIF's status check for {repo_id!r} failed: "
                                   f"{type(running).__name__}: {str(running).splitlines()[0] if str(running) else ''}")
    if not running:
        raise NdifUnavailableError(f"NDIF is not running {repo_id!r} now; print(nnsight.status()) lists the "
                                   "models it runs, or use remote='local' with a model loaded here")


def _local_source(name: str | None) -> tuple[str, str, str | None]:
    """(what to load, a label for messages, the Hub id or None) for a name, by load_model's rules."""
    if name is None or name in ORGANISM_NAMES:
        if not (ORGANISM_DIR / "model.safetensors").exists():
            raise ModelUnavailableError(f"the bundled organism is missing from {ORGANISM_DIR}; "
                                        "reinstall the workbook or run `make organism`")
        return str(ORGANISM_DIR), "the workbook organism", None
    folder = Path(name).expanduser()
    if name.startswith(("/", "./", "../", "~")) and not folder.is_dir():
        raise ModelUnavailableError(f"no folder at {name}: give the path of a Hugging Face model folder, "
                                    "a Hub name such as 'gpt2-small', or nothing for the bundled organism")
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise ModelUnavailableError(f"{name} is a folder but has no config.json: not a Hugging Face model folder")
        return str(folder), f"local folder {name}", None
    repo_id = official_hub_name(name)  # ValueError, one line, for an unknown name
    return repo_id, repo_id, repo_id


def load_nnsight_model(name: str | None = None, device: str = "auto", remote: bool | str = False,
                       dtype: torch.dtype = torch.float32, verbose: bool = True):
    """An nnsight `TransformersModel` for `name`: None for the organism, a local folder, or a Hub name.

    `remote=False` or `"local"` loads the weights here, on `device`, with `load_model`'s offline
    rules. `remote=True` loads only the model's shape (no weights) and checks first that NDIF
    runs it now (`check_ndif`); every trace then goes to NDIF.
    """
    import nnsight

    start = time.perf_counter()
    if remote not in (False, True, "local"):
        raise ValueError(f"remote={remote!r}: use False (here), 'local' (a rehearsal of a remote run) or True (NDIF)")
    source, label, repo_id = _local_source(name)
    if remote is True:
        if repo_id is None:
            raise NdifUnavailableError(f"{label} exists only on this machine, and NDIF runs only models it hosts "
                                       "(a Hub name): use remote='local' to rehearse with it")
        check_ndif(repo_id)
        with quiet_transformers():
            model = nnsight.TransformersModel(repo_id, task="text-generation")  # weights stay on NDIF
        where = "NDIF (weights stay there)"
    else:
        device = resolve_device(device)
        if repo_id is not None and not hub_is_reachable():
            source = _cached_snapshot(repo_id)  # offline: only a cached copy will do
            if source is None:
                raise ModelUnavailableError(
                    f"{name!r} needs the Hugging Face Hub, which is not reachable from here (offline). Use "
                    "load_nnsight_model() for the bundled organism, or a folder with a local copy.")
        with quiet_transformers():
            model = nnsight.TransformersModel(source, task="text-generation", device_map=device, dispatch=True,
                                              dtype=dtype)
        where = device
    if verbose:
        config = model.config
        print(f"loaded {label} for nnsight: {config.num_hidden_layers} layers, d_model {config.hidden_size}, "
              f"on {where} ({time.perf_counter() - start:.1f}s)")
    return model


# --------------------------------------------------------------------------------------------
# Hook names <-> nnsight module paths


@dataclass(frozen=True)
class HookPoint:
    """Where one workbook hook lives in an nnsight model.

    `module` is the module's path (`{layer}` filled in), `port` what of it to read: its
    `output`, its first `input`, or `output[0]` for modules that return a tuple. `heads` splits
    the last dimension into `[head_index, d_head]`. `bridge` says how the value relates to what
    `load_model()`'s bridge caches under the same name (see `to_bridge_convention`).
    """

    hook: str
    module: str
    port: str
    heads: bool = False
    writable: bool = True
    bridge: str = "same"


# One list per architecture (the config's `model_type`), in the order a forward pass reaches them.
HOOKS: dict[str, list[HookPoint]] = {
    "gpt2": [
        HookPoint("hook_embed", "transformer.wte", "output", bridge="centred"),
        # [1 pos d_model]: one row shared by the batch (the bridge repeats it per prompt)
        HookPoint("hook_pos_embed", "transformer.wpe", "output", bridge="centred"),
        HookPoint("blocks.{layer}.hook_resid_pre", "transformer.h.{layer}", "input", bridge="centred"),
        HookPoint("blocks.{layer}.attn.hook_z", "transformer.h.{layer}.attn.c_proj", "input", heads=True,
                  bridge="minus value bias"),
        HookPoint("blocks.{layer}.hook_attn_out", "transformer.h.{layer}.attn", "output[0]", bridge="centred"),
        # ln_2's input is a copy of the residual stream: writing it would change the MLP's input only.
        HookPoint("blocks.{layer}.hook_resid_mid", "transformer.h.{layer}.ln_2", "input", writable=False,
                  bridge="centred"),
        HookPoint("blocks.{layer}.mlp.hook_pre", "transformer.h.{layer}.mlp.c_fc", "output"),
        HookPoint("blocks.{layer}.mlp.hook_post", "transformer.h.{layer}.mlp.act", "output"),
        HookPoint("blocks.{layer}.hook_mlp_out", "transformer.h.{layer}.mlp", "output", bridge="centred"),
        HookPoint("blocks.{layer}.hook_resid_post", "transformer.h.{layer}", "output", bridge="centred"),
        HookPoint("ln_final.hook_normalized", "transformer.ln_f", "output", bridge="without ln weights"),
        HookPoint("hook_unembed", "lm_head", "output", bridge="centred"),
    ],
    # Llama-family models (most of those NDIF hosts). RMSNorm has no mean to centre: the bridge
    # changes only the final norm (weight folded) and the logits (centred).
    "llama": [
        HookPoint("hook_embed", "model.embed_tokens", "output"),
        HookPoint("blocks.{layer}.hook_resid_pre", "model.layers.{layer}", "input"),
        HookPoint("blocks.{layer}.attn.hook_z", "model.layers.{layer}.self_attn.o_proj", "input", heads=True),
        HookPoint("blocks.{layer}.hook_attn_out", "model.layers.{layer}.self_attn", "output[0]"),
        HookPoint("blocks.{layer}.hook_resid_mid", "model.layers.{layer}.post_attention_layernorm", "input",
                  writable=False),
        HookPoint("blocks.{layer}.mlp.hook_pre", "model.layers.{layer}.mlp.gate_proj", "output"),
        HookPoint("blocks.{layer}.mlp.hook_pre_linear", "model.layers.{layer}.mlp.up_proj", "output"),
        HookPoint("blocks.{layer}.mlp.hook_post", "model.layers.{layer}.mlp.down_proj", "input"),
        HookPoint("blocks.{layer}.hook_mlp_out", "model.layers.{layer}.mlp", "output"),
        HookPoint("blocks.{layer}.hook_resid_post", "model.layers.{layer}", "output"),
        HookPoint("ln_final.hook_normalized", "model.norm", "output", bridge="without ln weights"),
        HookPoint("hook_unembed", "lm_head", "output", bridge="centred"),
    ],
}


def _architecture(model) -> str:
    kind = model.config.model_type
    if kind not in HOOKS:
        raise ValueError(f"no hook table for {kind!r} models; the table knows {', '.join(sorted(HOOKS))}")
    return kind


def hook_point(model, hook_name: str) -> tuple[HookPoint, int | None, str]:
    """(its HookPoint, its layer or None, the filled-in module path) for a workbook hook name."""
    for position, point in enumerate(HOOKS[_architecture(model)]):
        pattern = "^" + re.escape(point.hook).replace(r"\{layer\}", r"(\d+)") + "$"
        found = re.match(pattern, hook_name)
        if found:
            layer = int(found.group(1)) if found.groups() else None
            if layer is not None and layer >= model.config.num_hidden_layers:
                raise ValueError(f"{hook_name}: the model has layers 0 to {model.config.num_hidden_layers - 1}")
            return point, layer, point.module.format(layer=layer)
    known = ", ".join(point.hook for point in HOOKS[_architecture(model)])
    raise ValueError(f"no nnsight path for hook {hook_name!r}; the table maps {known}")


def hook_table(model, layer: int = 0) -> list[tuple[str, str, str]]:
    """The translation table for `model`, one row per hook at `layer`: (hook name, nnsight access, bridge relation).

    For display: `for row in hook_table(lm): print(*row, sep="  |  ")`.
    """
    rows = []
    for point in HOOKS[_architecture(model)]:
        module = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", point.module.format(layer=layer))  # h.1 -> h[1]
        access = f"{module}.{point.port}" + ("  (split into heads)" if point.heads else "")
        access += "" if point.writable else "  (read only)"
        rows.append((point.hook.format(layer=layer), access, point.bridge))
    return rows


def module_at(model, path: str):
    """The nnsight envoy at a dotted module path ('transformer.h.1.attn')."""
    envoy = model
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def execution_order(model, hook_name: str) -> tuple[int, int, int]:
    """A sort key: the order in which a forward pass reaches the hook (reads in a trace must follow it)."""
    point, layer, _ = hook_point(model, hook_name)
    points = HOOKS[_architecture(model)]
    index = points.index(point)
    first_block = next(i for i, p in enumerate(points) if "{layer}" in p.hook)
    if layer is not None:
        return (1, layer, index)
    return (0 if index < first_block else 2, 0, index)


def _heads(model) -> tuple[int, int]:
    heads = model.config.num_attention_heads
    return heads, getattr(model.config, "head_dim", None) or model.config.hidden_size // heads


def read_activation(model, hook_name: str) -> torch.Tensor:
    """Inside a trace: the value the workbook calls `hook_name` (e.g. 'blocks.1.hook_resid_post').

    Reads must come in the order of the forward pass (`execution_order`); nnsight raises
    OutOfOrderError otherwise. The value is nnsight's, in the model's own convention, which can
    differ from the bridge's by a constant (`to_bridge_convention`).
    """
    point, _, path = hook_point(model, hook_name)
    envoy = module_at(model, path)
    value = envoy.input if point.port == "input" else envoy.output
    if point.port == "output[0]":
        value = value[0]
    if point.heads:
        value = value.view(*value.shape[:-1], *_heads(model))  # [batch pos d_model] -> [batch pos head_index d_head]
    return value


def read_activations(model, hook_names: list[str]) -> dict[str, torch.Tensor]:
    """Inside a trace: several activations, read in forward-pass order, returned under their names."""
    ordered = sorted(set(hook_names), key=lambda name: execution_order(model, name))
    values = {name: read_activation(model, name) for name in ordered}
    return {name: values[name] for name in hook_names}


def write_activation(model, hook_name: str, value: torch.Tensor) -> None:
    """Inside a trace: replace the activation `hook_name` by `value` (same shape as `read_activation`'s)."""
    point, _, path = hook_point(model, hook_name)
    if not point.writable:
        raise ValueError(f"{hook_name} cannot be written through {path}'s {point.port}: it is a copy of the "
                         "residual stream; write the previous or next hook instead")
    envoy = module_at(model, path)
    if point.heads:
        value = value.reshape(*value.shape[:-2], -1)  # [batch pos head_index d_head] -> [batch pos d_model]
    if point.port == "input":
        envoy.input = value
    elif point.port == "output[0]":
        envoy.output = (value, *envoy.output[1:])
    else:
        envoy.output = value


def to_bridge_convention(model, hook_name: str, value: torch.Tensor) -> torch.Tensor:
    """`value` as `load_model()`'s bridge (compatibility mode) caches it under `hook_name`.

    The bridge folds each LayerNorm's weights into the next matrix, centres every write to the
    residual stream and the unembedding (mean zero over its last dimension), and moves the value
    bias of attention (ln_1's bias included) into its output bias. None of this changes the
    model's probabilities, but it changes the tensors: residual-stream values and logits differ
    by their mean, `hook_z` by that value bias, `ln_final.hook_normalized` by the final
    LayerNorm's weight and bias. Only the MLP's `hook_pre` and `hook_post` are the same in both.
    """
    point, _, path = hook_point(model, hook_name)
    if point.bridge == "same":
        return value
    if point.bridge == "centred":
        return value - value.mean(-1, keepdim=True)
    if point.bridge == "minus value bias":
        block = module_at(model, path.rsplit(".", 2)[0])._module  # transformer.h.{layer}
        d_model = model.config.hidden_size
        # Every value vector gets this bias (ln_1's bias through W_V, plus b_V); attention weights sum to 1,
        # so z carries it whole, and the bridge moves it into the output bias instead.
        weight = block.attn.c_attn.weight[:, 2 * d_model:]  # Conv1D: [in, out]; the value third
        bias = block.attn.c_attn.bias[2 * d_model:]
        value_bias = (block.ln_1.bias @ weight + bias).detach().to(value.device)  # [d_model], heads side by side
        return value - value_bias.view(*_heads(model))
    if point.bridge == "without ln weights":
        norm = module_at(model, path)._module
        bias = getattr(norm, "bias", None)  # LayerNorm has one, RMSNorm not
        value = value if bias is None else value - bias.detach().to(value.device)
        return value / norm.weight.detach().to(value.device)
    raise ValueError(f"{hook_name}: no measured relation to the bridge for {_architecture(model)!r} models")


# --------------------------------------------------------------------------------------------
# Running a trace here, in a rehearsal, or on NDIF


def _restore_source_lines(before: dict) -> None:
    """Put back the source lines Python keeps for our files (`linecache`), as they were in `before`.

    Rebuilding a request registers the rebuilt code's lines under the original file names. A
    server does that in its own process; here it would leave our files' cached lines wrong, and
    the next request, which reads its functions' source from those lines, would fail.
    """
    for name in set(linecache.cache) - set(before):
        if os.path.exists(name):
            del linecache.cache[name]
    linecache.cache.update(before)


class RehearsalBackend:
    """Runs a trace as NDIF would, on this machine: what `remote="local"` means in the workbook.

    nnsight's own `model.trace(..., remote="local")` serialises the request and rebuilds it with
    this project's modules hidden (so a helper the server could not import fails here too), but
    then runs the block on the caller's own objects. This backend goes on as a server does: it
    runs the rebuilt block on the rebuilt copies, keeps only the values marked with `.save()`,
    and sends them back through `torch.save` / `torch.load`. So a list appended outside the
    trace stays empty here exactly as on NDIF, and an unsaved value never comes back.
    `result_bytes` is the size of what came back; `RehearsalBackend.last_result_bytes`, that of
    the latest rehearsal anywhere (a check reads it when the learner's code made the backend).
    Built on nnsight 0.8.1's own pieces (the pinned version; tests/test_nnsight.py fails if they
    change).
    """

    last_result_bytes: int | None = None

    def __init__(self, model) -> None:
        from nnsight.intervention.backends.local import LocalSimulationBackend

        self.model = model
        self.simulation = LocalSimulationBackend(model)  # for its hiding of local modules
        self.result_bytes = 0

    def __call__(self, tracer) -> None:
        from nnsight.ndif import pull_env
        from nnsight.schema.request import RequestModel
        from nnsight.tracing.tracer import _saves, mark
        from nnsight.tracing.util import push

        pull_env()  # ship this project's modules by value, as a remote request does
        request = RequestModel.serialize(tracer, compress=False)
        source_lines = dict(linecache.cache)
        try:
            hidden = self.simulation._hide_local_modules()
            try:
                server_side = RequestModel.deserialize(request, self.model._remoteable_persistent_objects())
            finally:
                self.simulation._restore(hidden)
            server_side.execute(server_side.info.code)  # runs on the copies; saved names land in its frame
        finally:
            _restore_source_lines(source_lines)
        saved = {name: value for name, value in server_side.info.frame.f_locals.items() if id(value) in _saves()}
        response = io.BytesIO()
        torch.save(saved, response)  # what travels back over the network
        self.result_bytes = RehearsalBackend.last_result_bytes = response.tell()
        # Our own bytes from two lines up, loaded the way nnsight's client loads NDIF's answer.
        returned = torch.load(io.BytesIO(response.getvalue()), map_location="cpu", weights_only=False)
        for value in returned.values():
            mark(value)  # saved again, so that they reach the caller's frame
        push(tracer.info.frame, returned)


def ship_workbook_by_value() -> None:
    """Send the workbook's own code (the `utils` package) with every remote request, by value.

    nnsight ships only modules that are not installed packages; after `pip install -e .` the
    workbook counts as installed, so a trace that calls a workbook helper (`read_activation`, a
    chapter's reference) would fail on NDIF, which does not have the workbook, with
    ModuleNotFoundError. Registering the package (its submodules follow) avoids that.
    """
    import nnsight

    import utils

    nnsight.register(utils)


def trace_options(model, remote: bool | str = False) -> dict[str, Any]:
    """The keyword arguments for `model.trace(...)` that run it here, in a rehearsal, or on NDIF.

    `with model.trace(tokens, **trace_options(model, remote)):` is `run_trace` for a block
    written inline; it works the same for `model.trace()` with `tracer.invoke(...)` blocks and
    for `model.session(...)`, whose traces then travel as one request.
    """
    if remote is False:
        return {}
    ship_workbook_by_value()
    if remote == "local":
        return {"backend": RehearsalBackend(model)}
    if remote is True:
        if Path(model.repo_id).expanduser().is_dir():
            raise NdifUnavailableError(f"this model was loaded from a folder ({model.repo_id}), which exists only "
                                       "on this machine; NDIF runs models it hosts, named by their Hub id "
                                       "(load_nnsight_model('<hub name>', remote=True)): use remote='local' "
                                       "to rehearse")
        check_ndif(model.repo_id)
        return {"remote": True}
    raise ValueError(f"remote={remote!r}: use False (here), 'local' (a rehearsal of a remote run) or True (NDIF)")


def run_trace(model, inputs, body: Callable[[Any], Any], remote: bool | str = False) -> Any:
    """Run `body(model)` inside one trace of `model` on `inputs`, and return what it returns.

    `remote` says where: False here, "local" in a rehearsal of a remote run, True on NDIF. The
    same `body` runs all three ways; it must `.save()` what it returns (nnsight.save for a list
    or dict built inside), because only saved values leave a trace.
    """
    result = None
    with model.trace(inputs, **trace_options(model, remote)):
        result = body(model)
    if result is None:
        raise ValueError("the trace returned nothing: call .save() on what the body returns "
                         "(only saved values leave a trace, here and on NDIF)")
    return result
