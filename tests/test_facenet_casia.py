"""FaceNet CASIA-WebFace converted from its frozen GraphDef, checked against OpenCV running that graph."""

import cv2
import numpy as np
import pytest
import torch
from facenet_pytorch import InceptionResnetV1

from conftest import DATA, OTHER_PEOPLE, PHOTOS, SAME_PERSON, aligned_for, assert_identity_sanity
from lowkeyd.engine.models.facenet import FaceNet
from lowkeyd.engine.models.facenet_tf import (
    casia_state_dict,
    load_facenet_casia,
    vggface2_state_dict,
)
from lowkeyd.engine.models.graphdef import GraphDef
from lowkeyd.engine.weights import weight_path
from lowkeyd.errors import WeightsError


@pytest.fixture(scope="module")
def graph_path():
    return weight_path("facenet_casia_graphdef")


@pytest.fixture(scope="module")
def graph(graph_path):
    return GraphDef.read(graph_path)


@pytest.fixture(scope="module")
def casia():
    return load_facenet_casia()


@pytest.fixture(scope="module")
def faces(casia):
    return aligned_for(casia)


@pytest.fixture(scope="module")
def embeddings(casia, faces):
    with torch.no_grad():
        return {name: casia(face)[0] for name, face in faces.items()}


def test_graph_reads_as_facenet(graph):
    assert graph.nodes["input"].op == "Placeholder"
    assert graph.nodes["input"].attrs["shape"] == (1, 160, 160, 3)
    # The graph's output is the L2-normalisation x * rsqrt(max(sum x^2, eps)).
    assert list(graph.nodes)[-1] == "embeddings" and graph.nodes["embeddings"].op == "Mul"
    consts = graph.constants()
    assert consts["InceptionResnetV1/Conv2d_1a_3x3/weights"].shape == (3, 3, 3, 32)
    assert consts["InceptionResnetV1/Bottleneck/weights"].shape == (1792, 512)


def test_graph_residual_scales_are_facenet_pytorchs(graph):
    """The block scales are scalar constants in the graph but hard-coded in facenet_pytorch: they must agree."""
    scales = {name: float(value) for name, value in graph.constants().items() if name.endswith("/mul/x")}
    net = InceptionResnetV1()
    expected = {}
    for tf_repeat, repeat, tf_block in (("Repeat", net.repeat_1, "block35"), ("Repeat_1", net.repeat_2, "block17"),
                                        ("Repeat_2", net.repeat_3, "block8")):  # fmt: skip
        for i, block in enumerate(repeat, start=1):
            expected[f"InceptionResnetV1/{tf_repeat}/{tf_block}_{i}/mul/x"] = block.scale
    expected["InceptionResnetV1/Block8/mul/x"] = net.block8.scale
    assert scales.keys() == expected.keys()
    for name, scale in expected.items():
        assert scales[name] == pytest.approx(scale, abs=1e-7), name


def test_state_dict_fills_every_facenet_weight(graph_path):
    state = casia_state_dict(graph_path)
    reference = FaceNet("facenet_casia", 512, 0.45, 0.168, standardisation="fixed").state_dict()
    assert state.keys() == reference.keys()
    assert all(state[k].shape == reference[k].shape for k in state)


def test_matches_opencv_dnn_on_the_graph(graph_path, casia, faces, embeddings):
    """Same faces through OpenCV's own TF importer: the converted network must agree to float32 noise.

    The graph takes fixed-standardised NHWC pixels; OpenCV takes NCHW blobs and
    runs this graph at batch 1 only (its Flatten reshape is hard-coded to 1).
    """
    net = cv2.dnn.readNetFromTensorflow(str(graph_path))
    worst = 0.0
    for name in PHOTOS:
        net.setInput(((faces[name] * 255 - 127.5) / 128).numpy())
        reference = net.forward().reshape(-1)
        assert np.linalg.norm(reference) == pytest.approx(1.0, abs=1e-5)  # the graph's output is normalised
        worst = max(worst, float(np.abs(reference - embeddings[name].numpy()).max()))
    assert worst <= 1e-4


def test_tells_people_apart(casia, embeddings):
    similarity = {(a, b): float(embeddings[a] @ embeddings[b]) for a in PHOTOS for b in PHOTOS}
    assert_identity_sanity(similarity)
    # The threshold is a published one, not fitted to these photos; it should still split them.
    same = [similarity[a, b] for a in SAME_PERSON for b in SAME_PERSON if a < b]
    other = [similarity[a, b] for a in SAME_PERSON for b in OTHER_PEOPLE]
    assert min(same) >= casia.threshold > max(other), (same, other)


def test_attributes(casia):
    assert casia.name == "facenet_casia"
    assert casia.input_size == (160, 160)
    assert casia.embedding_dim == 512
    assert not casia.training


def test_input_gradients_are_finite(casia, faces):
    x = torch.cat([faces["obama.jpg"], faces["biden.jpg"]]).requires_grad_(True)
    emb = casia(x)
    (emb[0] @ emb[1]).backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().max() > 0


def test_not_a_graph_is_a_weights_error(tmp_path, graph_path):
    truncated = tmp_path / "truncated.pb"
    truncated.write_bytes(graph_path.read_bytes()[: 1 << 20])
    with pytest.raises(WeightsError):
        casia_state_dict(truncated)
    jpeg = tmp_path / "photo.pb"
    jpeg.write_bytes((DATA / "obama.jpg").read_bytes())
    with pytest.raises(WeightsError):
        casia_state_dict(jpeg)


def test_vggface2_release_layout_maps_onto_facenet(tmp_path):
    """The release file's layout (InceptionResnetV1 with its 8631-way classifier), with untrained values:
    the real file needs GitHub, out of reach here."""
    release = InceptionResnetV1(classify=True, num_classes=8631).state_dict()
    path = tmp_path / "20180402-114759-vggface2.pt"
    torch.save(release, path)
    state = vggface2_state_dict(path)
    model = FaceNet("facenet_vggface2", 512, 0.45, 0.168, standardisation="fixed")
    model.load_state_dict(state)  # strict: every key present, none left over
    assert not any("logits" in k for k in state)
    assert torch.equal(model.net.last_linear.weight, release["last_linear.weight"])


def test_vggface2_bad_file_is_a_weights_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a state dict")
    with pytest.raises(WeightsError):
        vggface2_state_dict(path)
