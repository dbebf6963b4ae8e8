"""The one place that asks torch about devices and decides device and numeric precision (auto: cuda > mps > cpu).

Everything else in featkit reads the same on a CPU and a GPU: it takes a :class:`Runtime` from here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from featkit.choices import Precision
from featkit.errors import DeviceError, check_choice

log = logging.getLogger(__name__)

# StrEnum keys: looked up by the plain strings too
PRECISIONS: dict[str, torch.dtype | None] = {Precision.fp32: None, Precision.bf16: torch.bfloat16,
                                             Precision.fp16: torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Where and how a forward pass runs."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def channels_last(self) -> bool:
        # NHWC is the fast convolution layout for oneDNN on x86 CPUs and for tensor cores on GPUs.
        return self.device.type in ("cpu", "cuda")

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def describe(self) -> str:
        if self.is_cuda:
            return f"{torch.cuda.get_device_name(self.device)} ({self.device}), {self.precision}"
        threads = torch.get_num_threads()
        return f"{self.device.type}, {threads} thread{'s' * (threads > 1)}, {self.precision}"


class SideStream:
    """Work queued on a second CUDA stream, so that it overlaps what the current stream computes (a no-op elsewhere).

    ``run`` queues ``fn`` on the side stream (its inputs must come from the host, as it does not wait for the current
    stream); ``hand_over`` makes the current stream wait for the side stream before it uses a tensor made there, and
    tells the allocator so.
    """

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def run(self, fn, *args):
        if self.stream is None:
            return fn(*args)
        with torch.cuda.stream(self.stream):
            return fn(*args)

    def hand_over(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.stream is not None and tensor.is_cuda:
            current = torch.cuda.current_stream(tensor.device)
            current.wait_stream(self.stream)
            tensor.record_stream(current)
        return tensor


class HostStaging:
    """Copies CPU tensors to ``device`` through a few page-locked buffers allocated once and reused.

    Pinning each decoded chunk anew (``DataLoader(pin_memory=True)``) costs a page-locked allocation per chunk: on an
    H200 machine that thread took 20 ms per 32 crops and capped every end-to-end run near 1,600 images/s whatever
    decoded them. A slot is reused once the copy out of it has finished (its event); elsewhere a plain ``to``.
    """

    def __init__(self, device: torch.device, slots: int = 4):
        self.device = device
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.events: list[torch.cuda.Event | None] = [None] * slots
        self.turn = 0

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda" or tensor.numel() == 0 or tensor.is_cuda:
            return tensor.to(self.device)  # (on a GPU already: the GPU decoder's crops; "cuda" is not "cuda:0")
        if not (tensor.is_contiguous() or tensor.is_contiguous(memory_format=torch.channels_last)):
            tensor = tensor.contiguous()  # the staged copy below keeps the strides: they must be dense
        k, self.turn = self.turn, (self.turn + 1) % len(self.buffers)
        event = self.events[k]
        if event is not None:
            event.synchronize()  # the last copy out of this slot is done
        nbytes = tensor.numel() * tensor.element_size()
        buffer = self.buffers[k]
        if buffer is None or buffer.numel() < nbytes:
            buffer = self.buffers[k] = torch.empty(max(nbytes, 2 * (0 if buffer is None else buffer.numel())),
                                                   dtype=torch.uint8, pin_memory=True)
        staged = buffer[:nbytes].view(tensor.dtype).as_strided(tensor.size(), tensor.stride())
        staged.copy_(tensor)
        out = staged.to(self.device, non_blocking=True)
        self.events[k] = event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return out


def start_fetch(tensors: dict[str, torch.Tensor]):
    """Start copying ``tensors`` to the host without waiting; the function returned waits and gives the copies.

    On a GPU the copy is queued behind the computation that makes them, so the caller can queue more work (the next
    batch's decode) before it waits.
    """
    on_gpu = [v for v in tensors.values() if v.is_cuda]
    if not on_gpu:
        host = {k: v.cpu() for k, v in tensors.items()}
        return lambda: host
    copies = {k: v.to("cpu", non_blocking=True) for k, v in tensors.items()}  # page-locked, from torch's cache
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(on_gpu[0].device))

    def wait() -> dict[str, torch.Tensor]:
        done.synchronize()
        # into ordinary memory: callers keep these arrays (featkit.embed all of them), page-locked memory goes back
        return {k: torch.empty(v.shape, dtype=v.dtype).copy_(v) for k, v in copies.items()}

    return wait


def is_gpu_memory_error(exc: BaseException) -> bool:
    """True for a CUDA out-of-memory error (which must stop a run, not be taken for a bad file)."""
    return isinstance(exc, torch.OutOfMemoryError)


def cpu_has_bf16() -> bool:
    """True where the CPU has native bf16 arithmetic (AVX512-BF16 / AMX): bf16 autocast then pays off."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


THREADS_ENV = "FEATKIT_NUM_THREADS"
_threads_set = False


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity), however many threads it computes with."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_threads() -> int:
    """The intra-op threads featkit computes with on a CPU, decided once per process.

    ``$FEATKIT_NUM_THREADS`` (``featkit --threads N`` sets it) if given. Otherwise torch's own choice (one per
    core), unless the machine is busy: then the cores other processes' running threads leave free, so that
    featkit's threads don't fight theirs (on a loaded 2-core machine a probe took 47 s instead of 1.9 s).
    """
    global _threads_set
    if not _threads_set:
        _threads_set = True
        wanted = os.environ.get(THREADS_ENV, "").strip()
        if wanted:
            try:
                n = int(wanted)
            except ValueError:
                raise DeviceError(f"${THREADS_ENV} must be a whole number of threads. Got {wanted!r}.") from None
            if n < 1:
                raise DeviceError(f"${THREADS_ENV} must be at least 1. Got {n}.")
            torch.set_num_threads(n)
        else:
            cores = machine_cores()
            others = _running_elsewhere()
            free = max(1, cores - others)
            if free < torch.get_num_threads():
                log.info("the machine is busy (%d other processes running on %d cores): computing on %d threads; "
                         "set --threads or $%s to choose", others, cores, free, THREADS_ENV)
                torch.set_num_threads(free)
    return torch.get_num_threads()


def _running_elsewhere() -> int:
    """Threads of other processes running right now (Linux's /proc/loadavg; 0 where it can't be known).

    Not the load average: a featkit command run just after another would read the first one's load and halve
    itself for a minute.
    """
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0
    return max(0, running - 1)  # this process is running too


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; explicit requests that this machine can't serve raise."""
    cpu_threads()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"Unknown device '{name}'. Use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for but no CUDA GPU is visible. Use --device auto or cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("--device mps was asked for but MPS is not available. Use --device auto or cpu.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"Unsupported device '{name}'. Use auto, cpu, cuda, cuda:N or mps.")
    return device


def device_list(spec: str, procs: int | None = None) -> list[str]:
    """The device of each worker process for ``--device`` ``spec`` and ``--procs``.

    ``all`` is every visible CUDA GPU (the CPU where there is none); ``cuda:0,cuda:1`` those GPUs; one device
    serves ``procs`` processes. ``procs`` defaults to one per listed device; more than that share them in turn.

    Raises:
        DeviceError: a device this machine cannot serve, or ``procs`` < 1.
    """
    if procs is not None and procs < 1:
        raise DeviceError(f"--procs must be at least 1. Got {procs}.")
    if spec == "all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = [f"cuda:{i}" for i in range(count)] or ["cpu"]
    else:
        devices = [str(resolve_device(d.strip())) for d in spec.split(",") if d.strip()] or ["cpu"]
        if len(set(devices)) != len(devices):
            raise DeviceError(f"--device {spec} names a device twice; use --procs to run several processes on one.")
    n = procs or len(devices)
    return [devices[i % len(devices)] for i in range(n)]


def bind_worker(device: str, procs: int) -> None:
    """In one of ``procs`` worker processes: compute on ``device`` alone, with this process's share of the cores.

    The threads compute on a CPU, and decode JPEGs beside a GPU.
    """
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))
    if procs > 1 and not os.environ.get(THREADS_ENV):
        cores = machine_cores()
        os.environ[THREADS_ENV] = str(max(1, cores // procs))


def resolve_runtime(device: str = "auto", precision: str = "fp32") -> Runtime:
    precision = check_choice("precision", precision, Precision, "resolve_runtime", error=DeviceError)
    dev = resolve_device(device)
    if dev.type == "cpu" and precision == "fp16":
        raise DeviceError("--precision fp16 needs a GPU; on the CPU use --precision bf16 (or fp32).")
    if dev.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise DeviceError("This GPU has no bf16 support; use --precision fp16 (or fp32).")
        # batches have one shape, so cuDNN's autotuner pays for itself after the first batch
        torch.backends.cudnn.benchmark = True
    return Runtime(dev, precision)


def training_runtime(device: str, amp: bool, *, local_rank: int = 0, world: int = 1) -> Runtime:
    """Where one training process runs, and in which precision.

    Under torchrun (``world`` > 1) ``auto`` means one GPU per process (``cuda:local_rank``). ``amp`` trains in
    bf16 autocast on GPUs that have it, else fp16 (with a grad scaler); CPUs train in fp32.
    """
    one_gpu_each = world > 1 and device == "auto" and torch.cuda.is_available()
    dev = resolve_device(f"cuda:{local_rank}" if one_gpu_each else device)
    precision = "fp32"
    if amp and dev.type == "cuda":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return resolve_runtime(str(dev), precision)


def distributed_backend(local_rank: int) -> str:
    """The process-group backend for this machine (NCCL with GPUs, gloo without).

    Binds the process's GPU first, so that NCCL starts on the right one.
    """
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return "nccl"
    return "gloo"


def rng_state() -> dict:
    """This process's torch random states: the CPU's, and every CUDA device's when there are any."""
    state: dict[str, torch.Tensor | list[torch.Tensor]] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
