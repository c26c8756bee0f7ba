"""A fake Vertex AI JobService on a loopback gRPC port, for the real google-cloud-aiplatform clients.

Both the sync ``JobServiceClient`` and the async ``JobServiceAsyncClient`` talk to it
over real gRPC (an insecure channel). It keeps custom jobs in memory, records every
request, and lets a test move jobs through their states or inject errors.
``before_call(method, request, context)`` is called before each call is handled
(outside the lock, so it may block) and may ``context.abort(...)`` it: a throttled or
failed call.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
from google.cloud.aiplatform_v1.types import custom_job as cj
from google.cloud.aiplatform_v1.types import job_service, job_state
from google.protobuf import empty_pb2, timestamp_pb2

SERVICE = "google.cloud.aiplatform.v1.JobService"
S = job_state.JobState
LABEL_FILTER_RE = re.compile(r'labels\.([\w-]+)\s*=\s*"([^"]*)"')


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


@dataclass
class Recorded:
    method: str
    request: Any


@dataclass
class FakeVertex:
    jobs: dict[str, cj.CustomJob] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    #: (grpc.StatusCode, message) the next CreateCustomJob answers with
    create_error: tuple[grpc.StatusCode, str] | None = None
    #: called in a thread after each create with the job: plays the training
    on_create: Callable[[cj.CustomJob], None] | None = None
    #: called with (method, request, context) before each call; may block or abort it
    before_call: Callable[[str, Any, grpc.ServicerContext], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- what a test reads -------------------------------------------------------------
    def calls(self, method: str) -> list[Any]:
        return [r.request for r in self.requests if r.method == method]

    def by_display_name(self, display_name: str) -> cj.CustomJob:
        return next(j for j in self.jobs.values() if j.display_name == display_name)

    # -- what a test makes the cloud do ------------------------------------------------
    def start(self, name: str) -> None:
        with self.lock:
            job = self.jobs[name]
            job.state = S.JOB_STATE_RUNNING
            job.start_time = _now()

    def succeed(self, name: str) -> None:
        self._end(name, S.JOB_STATE_SUCCEEDED)

    def fail(self, name: str, code: int, message: str) -> None:
        self._end(name, S.JOB_STATE_FAILED, code, message)

    def preempt(self, name: str) -> None:
        """The spot workers were reclaimed and the job failed (what Vertex reports as a stockout)."""
        self.fail(name, 14, "STOCKOUT: the spot VMs of workerpool0 were preempted")

    def _end(self, name: str, state: S, code: int = 0, message: str = "") -> None:
        with self.lock:
            job = self.jobs[name]
            job.state = state
            job.end_time = _now()
            if code:
                job.error.code = code
                job.error.message = message

    # -- the service -------------------------------------------------------------------
    def _before(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        if self.before_call is not None:
            try:
                self.before_call(method, request, context)
            except Exception:  # context.abort raises; record the call it refused
                with self.lock:
                    self.requests.append(Recorded(method, request))
                raise

    def create(self, request: job_service.CreateCustomJobRequest, context: grpc.ServicerContext) -> cj.CustomJob:
        self._before("CreateCustomJob", request, context)
        with self.lock:
            self.requests.append(Recorded("CreateCustomJob", request))
            if self.create_error:
                code, message = self.create_error
                context.abort(code, message)
            job = cj.CustomJob(request.custom_job)
            job.name = f"{request.parent}/customJobs/{uuid.uuid4().int % 10**18}"
            job.state = S.JOB_STATE_PENDING
            job.create_time = _now()
            self.jobs[job.name] = job
        if self.on_create is not None:
            threading.Thread(target=self.on_create, args=(job,), daemon=True).start()
        return job

    def get(self, request: job_service.GetCustomJobRequest, context: grpc.ServicerContext) -> cj.CustomJob:
        self._before("GetCustomJob", request, context)
        with self.lock:
            self.requests.append(Recorded("GetCustomJob", request))
            job = self.jobs.get(request.name)
            if job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"CustomJob {request.name} not found")
            return cj.CustomJob(job)

    def list(self, request: job_service.ListCustomJobsRequest,
             context: grpc.ServicerContext) -> job_service.ListCustomJobsResponse:
        self._before("ListCustomJobs", request, context)
        with self.lock:
            self.requests.append(Recorded("ListCustomJobs", request))
            terms = LABEL_FILTER_RE.findall(request.filter)
            jobs = [cj.CustomJob(j) for j in self.jobs.values()
                    if j.name.startswith(request.parent + "/") and all(j.labels.get(k) == v for k, v in terms)]
            return job_service.ListCustomJobsResponse(custom_jobs=jobs)

    def cancel(self, request: job_service.CancelCustomJobRequest, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self._before("CancelCustomJob", request, context)
        with self.lock:
            self.requests.append(Recorded("CancelCustomJob", request))
            job = self.jobs.get(request.name)
            if job is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"CustomJob {request.name} not found")
            if job.state in (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"CustomJob {request.name} is already final")
            job.state = S.JOB_STATE_CANCELLED
            job.end_time = _now()
            return empty_pb2.Empty()


def _unary(fn: Callable[..., Any], request_type: Any, response_serialize: Callable[[Any], bytes]) -> Any:
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=request_type.deserialize, response_serializer=response_serialize)


class VertexServer:
    """Serve a :class:`FakeVertex` on a free loopback port; use as a context manager."""

    def __init__(self, fake: FakeVertex | None = None) -> None:
        self.fake = fake or FakeVertex()
        f = self.fake
        handlers = {
            "CreateCustomJob": _unary(f.create, job_service.CreateCustomJobRequest, cj.CustomJob.serialize),
            "GetCustomJob": _unary(f.get, job_service.GetCustomJobRequest, cj.CustomJob.serialize),
            "ListCustomJobs": _unary(f.list, job_service.ListCustomJobsRequest,
                                     job_service.ListCustomJobsResponse.serialize),
            "CancelCustomJob": _unary(f.cancel, job_service.CancelCustomJobRequest,
                                      empty_pb2.Empty.SerializeToString),
        }
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> VertexServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None).wait(5)
