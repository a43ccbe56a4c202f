"""AMQP_URL with several nodes: parsed per node, every password masked, rotation order."""

from __future__ import annotations

import gc

import pytest
from aio_pika import RobustConnection
from pydantic import ValidationError

from service.broker.connection import ClusterConnection, OpeningOrder, mask_url, parse_urls
from service.settings import Settings

THREE = (
    "amqp://u1:pw-one@node1:5672/vh1, amqp://u2:pw-two@node2:5673/vh2,"
    "amqps://u3:pw-three@node3:5671/%2F"
)


def test_each_node_keeps_its_own_vhost_and_credentials() -> None:
    nodes = parse_urls(THREE)
    assert [(n.host, n.port, n.user, n.password) for n in nodes] == [
        ("node1", 5672, "u1", "pw-one"),
        ("node2", 5673, "u2", "pw-two"),
        ("node3", 5671, "u3", "pw-three"),
    ]
    assert [n.path for n in nodes] == ["/vh1", "/vh2", "//"]


def test_one_node_is_a_list_of_one() -> None:
    [node] = parse_urls("amqp://guest:guest@localhost:5672/")
    assert (node.host, node.path) == ("localhost", "/")


@pytest.mark.parametrize(
    "bad",
    [
        "amqp://u:pw-secret@node1/vh,",
        "http://u:pw-secret@node1/vh",
        "amqp://u:pw-secret@node1/vh,not a url",
        "amqp:///vh",
    ],
)
def test_a_bad_entry_is_refused_without_its_password(bad: str) -> None:
    with pytest.raises(ValueError, match="AMQP_URL entry") as caught:
        parse_urls(bad)
    assert "pw-secret" not in str(caught.value)


def test_settings_refuse_a_bad_list_without_echoing_passwords() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(amqp_url="amqp://u:pw-secret@node1/vh,ftp://u:pw-other@node2/")
    assert "pw-secret" not in str(caught.value)
    assert "pw-other" not in str(caught.value)
    assert "entry 2" in str(caught.value)


def test_mask_url_masks_every_node() -> None:
    masked = mask_url(THREE)
    for secret in ("pw-one", "pw-two", "pw-three"):
        assert secret not in masked
    assert masked == (
        "amqp://u1:******@node1:5672/vh1,amqp://u2:******@node2:5673/vh2,"
        "amqps://u3:******@node3:5671/%2F"
    )


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("amqp://guest@host/", "amqp://guest@host/"),  # no password: nothing to hide
        ("amqp://host/", "amqp://host/"),
        ("garbage:pw@x", "garbage:pw@x"),  # not a URL: left alone (parse_urls refuses it)
        ("amqp://u:p%40ss@h/v", "amqp://u:******@h/v"),
    ],
)
def test_mask_url_edge_cases(text: str, masked: str) -> None:
    assert mask_url(text) == masked


def test_the_aio_pika_attempt_hook_exists() -> None:
    """ClusterConnection wraps aio-pika's private connection attempt; an aio-pika release that
    renames it must fail here, not at the first failover in production."""
    assert callable(getattr(RobustConnection, "_RobustConnection__connect_transport", None))
    assert "_RobustConnection__connect_transport" in vars(ClusterConnection)


async def test_channels_are_kept_in_the_order_they_were_opened() -> None:
    connection = ClusterConnection(parse_urls(THREE))
    channels = vars(connection)["_RobustConnection__channels"]
    assert isinstance(channels, OpeningOrder)


def test_opening_order_is_insertion_order_and_weak() -> None:
    class Item:
        pass

    order: OpeningOrder[Item] = OpeningOrder()
    items = [Item() for _ in range(50)]
    for each in items:
        order.add(each)
    del each
    order.add(items[0])  # again: no duplicate, no move
    assert list(order) == items
    del items[10:]
    gc.collect()
    assert len(order) == 10


async def test_attempts_start_at_the_first_node_then_after_the_one_lost() -> None:
    connection = ClusterConnection(parse_urls(THREE))
    assert connection._order() == [0, 1, 2]
    connection._attempts, connection._current = 1, 0  # connected to node1, then lost it
    assert connection._order() == [1, 2, 0]
    connection._current = 2
    assert connection._order() == [0, 1, 2]
    assert "pw-one" not in connection.node
