"""A REPLACE is atomic for Verify, through a real node process over gRPC.

One client replaces a subject's templates over and over while others Verify
it: no Verify may answer NOT_FOUND. tests/test_gallery_replace.py does the
same on a Gallery in this process.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tests.conftest import NodeProcess, enroll_on_node, replace_while_verifying
from tunggal.node.v1 import node_pb2_grpc as node_grpc
from tunggal.templates import encode_template
from tunggal.v1 import tunggal_pb2 as pb
from tunggal_tools.synthetic import FaceModel, subject_id

pytestmark = pytest.mark.cluster  # starts real Tunggal processes

_MODEL = FaceModel(dim=128)
_REPLACES = 150
_VERIFIERS = 2


def test_verify_over_grpc_never_answers_not_found_during_replaces(node: NodeProcess) -> None:
    target = subject_id(3)
    captures = [
        encode_template(v) for v in np.concatenate([_MODEL.samples([3], c) for c in range(1, 5)])
    ]
    probe = pb.Probe(template=encode_template(_MODEL.samples([3], 9)[0]))
    codes: list[grpc.StatusCode] = []
    request = pb.VerifyRequest(subject_id=target, probe=probe)

    with grpc.insecure_channel(node.address) as channel:
        stub = node_grpc.MatcherNodeStub(channel)
        enroll_on_node(stub, range(200), _MODEL)

        def replace(n: int) -> None:
            first = n % 3
            stub.Enroll(
                pb.EnrollRequest(
                    subject_id=target,
                    templates=captures[first : first + 1 + n % 2],
                    mode=pb.ENROLL_MODE_REPLACE,
                ),
                timeout=10,
            )

        def verify() -> bool:
            try:
                reply = stub.Verify(request, timeout=10)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                return False
            assert reply.templates_compared in (1, 2)
            return True

        answered = replace_while_verifying(replace, verify, _REPLACES, _VERIFIERS)
        final = stub.Verify(request, timeout=10)
    assert codes == []  # no NOT_FOUND, nor any other error
    assert answered >= _REPLACES  # the verifiers really ran alongside
    assert final.templates_compared == 1 + (_REPLACES - 1) % 2
