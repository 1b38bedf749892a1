"""A consumer's test: a state dict through serializer.save/load over a real pipe."""

import os
import threading

import torch

import serializer


def test_state_dict_round_trips_over_a_pipe() -> None:
    torch.manual_seed(0)
    state = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).state_dict()
    read_fd, write_fd = os.pipe()
    errors = []

    def save() -> None:
        try:
            with os.fdopen(write_fd, "wb") as f:
                serializer.save(state, f)
        except BaseException as e:  # raised by the main thread
            errors.append(e)

    writer = threading.Thread(target=save)
    writer.start()
    try:
        with os.fdopen(read_fd, "rb") as f:
            loaded = serializer.load(f)
            rest = f.read()
    finally:
        writer.join()
        if errors:
            raise errors[0]  # the writer's failure explains the reader's
    assert rest == b""  # load consumed exactly the one stream
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key


def test_only_what_the_target_depends_on_is_there() -> None:
    import importlib.util

    import testing

    assert testing.__file__ and serializer.__file__
    assert importlib.util.find_spec("serializer.backends.cpu") is not None
    assert importlib.util.find_spec("serializer.backends.cuda") is None, "not a dependency"
