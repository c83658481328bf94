"""An OTLP/gRPC trace receiver for the tracing tests (tests/e2e/tracing.rs).

Serves `opentelemetry.proto.collector.trace.v1.TraceService/Export` with the messages of
the `opentelemetry-proto` package (the specification's own definitions, not Tarmac's),
on 127.0.0.1 at a free port, which it prints first as `listening PORT`. Then it prints
every span it receives as one line of JSON: ids in hex, kind and status by name,
attributes as a flat object, the resource's attributes under `resource`.

    python3 otlp_receiver.py
"""

import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(key_values):
    return {kv.key: value(kv.value) for kv in key_values}


# Exports from several proxies are served at once: one line is printed whole.
PRINTING = threading.Lock()


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    line = {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "trace_state": span.trace_state,
                        "name": span.name,
                        "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                        "start": span.start_time_unix_nano,
                        "end": span.end_time_unix_nano,
                        "status": trace_pb2.Status.StatusCode.Name(span.status.code),
                        "attributes": attributes(span.attributes),
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                    }
                    with PRINTING:
                        print(json.dumps(line), flush=True)
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    # Until the test closes our standard input (or kills us).
    sys.stdin.read()
    server.stop(grace=None)


if __name__ == "__main__":
    main()
