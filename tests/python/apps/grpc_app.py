"""A gRPC app for invocation tests: Dapr's AppCallback (OnInvoke echoes the call), AppCallbackHealthCheck, and a
plain `test.Echo` service (unary and server-streaming) reached through the sidecar's gRPC proxy.

Usage: python grpc_app.py PORT [NAME]
"""

import json
import sys
from concurrent import futures

import grpc
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
from google.protobuf import any_pb2, empty_pb2

NAME = sys.argv[2] if len(sys.argv) > 2 else "grpc-echo"


class Callback(appcallback_pb2_grpc.AppCallbackServicer):
    def OnInvoke(self, request, context):
        md = {k: v for k, v in context.invocation_metadata()}
        if request.method == "fail":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        body = {
            "app": NAME,
            "method": request.method,
            "verb": common_pb2.HTTPExtension.Verb.Name(request.http_extension.verb),
            "query": request.http_extension.querystring,
            "content_type": request.content_type,
            "data": request.data.value.decode("utf-8", "replace"),
            "caller": md.get("dapr-caller-app-id", ""),
        }
        return common_pb2.InvokeResponse(
            data=any_pb2.Any(value=json.dumps(body).encode()), content_type="application/json"
        )

    def ListTopicSubscriptions(self, request, context):
        return appcallback_pb2.ListTopicSubscriptionsResponse()

    def ListInputBindings(self, request, context):
        return appcallback_pb2.ListInputBindingsResponse()


class Health(appcallback_pb2_grpc.AppCallbackHealthCheckServicer):
    def HealthCheck(self, request, context):
        return appcallback_pb2.HealthCheckResponse()


def say(request: bytes, context) -> bytes:
    md = {k: v for k, v in context.invocation_metadata()}
    if request == b"error":
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
    context.set_trailing_metadata((("x-trailer", "from-" + NAME),))
    return json.dumps({"app": NAME, "got": request.decode(), "caller": md.get("dapr-caller-app-id", "")}).encode()


def count(request: bytes, context):
    for i in range(int(request.decode() or "3")):
        yield f"{NAME}:{i}".encode()


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(Callback(), server)
    appcallback_pb2_grpc.add_AppCallbackHealthCheckServicer_to_server(Health(), server)
    echo = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )
    server.add_generic_rpc_handlers((echo,))
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    _ = empty_pb2
    main()
