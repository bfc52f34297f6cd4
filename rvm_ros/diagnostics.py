"""``/diagnostics`` statuses of the node (diagnostic_msgs, as diagnostic_updater would publish).

One status per camera (``<node>: camera <topic>``) and one for the model and runtime
(``<node>: model``). Levels of a camera, first match wins:

* STALE: the node is not active, or no frame processed for ``stale_after_sec`` (or ever);
* ERROR: processing failed (runtime error) since the previous report;
* WARN: no frame processed for ``warn_after_sec``, inputs rejected since the previous report, or
  fewer processed frames per second than ``min_fps``;
* OK otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from rvm_ros.parameters import default

OK, WARN, ERROR, STALE = (
    DiagnosticStatus.OK,
    DiagnosticStatus.WARN,
    DiagnosticStatus.ERROR,
    DiagnosticStatus.STALE,
)


@dataclass(frozen=True)
class DiagnosticsConfig:
    """Thresholds of the camera levels (the node's ``diagnostics.*`` parameters)."""

    warn_after_sec: float = default("diagnostics.warn_after_sec")
    stale_after_sec: float = default("diagnostics.stale_after_sec")
    min_fps: float = default("diagnostics.min_fps")  # 0: no rate check


@dataclass(frozen=True)
class RuntimeInfo:
    """What the model status reports about the loaded runtime."""

    model_id: str = ""
    model_path: str = ""
    provider: str = ""  # ONNX Runtime execution provider actually used
    device: str = ""
    input_hw: tuple[int, int] | None = None
    requested_device: str = ""  # the node's ``device`` parameter ("": not known)
    fallback: str = ""  # why the setups tried before the one in use failed ("": none failed)


def runtime_info(
    runtime: Any, model_id: str, model_path: str, input_hw: Any, requested_device: str = ""
) -> RuntimeInfo:
    """RuntimeInfo from an ``RVMRuntime`` (or anything with ``device``/``session``; its
    ``attempts``, when present, give the reasons of a fallback)."""
    provider = ""
    session = getattr(runtime, "session", None)
    if session is not None and hasattr(session, "get_providers"):
        provider = (session.get_providers() or [""])[0]
    reasons = [a.reason for a in getattr(runtime, "attempts", []) if a.reason]
    return RuntimeInfo(
        model_id=model_id,
        model_path=model_path,
        provider=provider,
        device=str(getattr(runtime, "device", "")),
        input_hw=tuple(input_hw) if input_hw else None,
        requested_device=requested_device,
        fallback="; ".join(dict.fromkeys(reasons)),  # one missing library fails several setups
    )


def fallback_message(info: RuntimeInfo) -> str:
    """ "<device> requested, running on <other>: <reason>" when an explicitly requested device
    (cuda, tensorrt) is not the one in use, else ""."""
    want = info.requested_device
    if want not in ("cuda", "tensorrt") or not info.device or info.device == want:
        return ""
    used = "the CPU" if info.device == "cpu" else info.device
    return f"{want} requested, running on {used}: {info.fallback or 'no reason recorded'}"


def _kv(values: dict[str, Any]) -> list[KeyValue]:
    def text(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.3f}")
        return str(v)

    return [KeyValue(key=k, value=text(v)) for k, v in values.items()]


def camera_level(
    snap: Any, prev: Any | None, active: bool, config: DiagnosticsConfig
) -> tuple[int, str]:
    """(level, message) of one camera from its stats snapshot and the previous report's."""
    if not active:
        return STALE, "node not active"
    if math.isinf(snap.since_processed_s):
        if snap.frames_in:
            return WARN, f"{snap.frames_in} frames received, none processed yet"
        return STALE, "no frames received"
    errors = snap.rejected_by_reason.get("error", 0) - (
        prev.rejected_by_reason.get("error", 0) if prev else 0
    )
    rejected = snap.frames_rejected - (prev.frames_rejected if prev else 0)
    if snap.since_processed_s >= config.stale_after_sec:
        return STALE, f"no frame processed for {snap.since_processed_s:.1f} s"
    if errors > 0:
        return ERROR, f"{errors} frames failed in the runtime"
    if snap.since_processed_s >= config.warn_after_sec:
        return WARN, f"no frame processed for {snap.since_processed_s:.1f} s"
    if rejected > 0:
        before = prev.rejected_by_reason if prev else {}
        new = [k for k, n in sorted(snap.rejected_by_reason.items()) if n > before.get(k, 0)]
        return WARN, f"{rejected} frames rejected ({', '.join(new)})"
    if config.min_fps > 0 and snap.fps < config.min_fps:
        return WARN, f"{snap.fps:.1f} fps < min_fps {config.min_fps:g}"
    return OK, f"{snap.fps:.1f} fps"


def camera_status(
    node: str,
    camera: str,
    snap: Any,
    prev: Any | None,
    active: bool,
    config: DiagnosticsConfig,
    info: RuntimeInfo,
    extra: dict[str, Any] | None = None,
) -> DiagnosticStatus:
    """The DiagnosticStatus of one camera (values: rates, latencies, counters, runtime)."""
    level, message = camera_level(snap, prev, active, config)
    values = {
        "fps": snap.fps,
        "latency_p50_ms": snap.latency_p50_ms,
        "latency_p95_ms": snap.latency_p95_ms,
        "step_p50_ms": snap.step_p50_ms,
        "frames_in": snap.frames_in,
        "frames_processed": snap.frames_processed,
        "frames_dropped": snap.frames_dropped,
        "frames_rejected": snap.frames_rejected,
        "rejected_by_reason": ", ".join(
            f"{k}={v}" for k, v in sorted(snap.rejected_by_reason.items())
        ),
        "resets": snap.resets,
        "since_received_s": snap.since_received_s,
        "since_processed_s": snap.since_processed_s,
        "provider": info.provider,
        "device": info.device,
        "model_id": info.model_id,
        **(extra or {}),
    }
    return DiagnosticStatus(
        level=level,
        name=f"{node}: camera {camera}",
        message=message,
        hardware_id=camera,
        values=_kv(values),
    )


def model_status(node: str, state: str, info: RuntimeInfo | None, error: str) -> DiagnosticStatus:
    """The model/runtime status: OK when loaded (any lifecycle state), WARN when loaded on another
    device than the one requested, ERROR with the reason of a failed configuration, STALE when
    nothing is loaded."""
    fallback = fallback_message(info) if info is not None else ""
    if fallback:
        level, message = WARN, fallback
    elif info is not None:
        level, message = OK, f"{info.model_id} on {info.provider or info.device} ({state})"
    elif error:
        level, message = ERROR, error
    else:
        level, message = STALE, f"no model loaded ({state})"
    hw = info.input_hw if info else None
    values = {
        "lifecycle_state": state,
        "model_id": info.model_id if info else "",
        "model_path": info.model_path if info else "",
        "provider": info.provider if info else "",
        "device": info.device if info else "",
        "requested_device": info.requested_device if info else "",
        "fallback": info.fallback if info else "",
        "input_size": f"{hw[0]}x{hw[1]}" if hw else "",
    }
    return DiagnosticStatus(
        level=level, name=f"{node}: model", message=message, hardware_id="", values=_kv(values)
    )
