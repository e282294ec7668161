"""An image file on the controller runs on a host adopted over SSH: its layers travel over
the agent's SSH relay into the host's own store, and the file is not needed afterwards."""

from __future__ import annotations

from busybox_image import HTTPD_COMMAND, http_get, make_busybox_image
from test_ssh_adopt import adopted  # noqa: F401  (the fixture: a lab host adopted as s1)


def test_image_file_runs_on_an_adopted_host(adopted, tmp_path):  # noqa: F811
    lab, _sshd, address, remote, args = adopted
    lab.cm("host", "add", "s1", *args)
    image = make_busybox_image(tmp_path / "web.tar", page="over ssh\n")
    res = lab.cm("run", "s1", "web", "--image", str(image), "--publish", "18082:8080", "--", *HTTPD_COMMAND)
    assert res.stderr.count("sending layer") == 1
    image.unlink()
    assert http_get(address, 18082) == "over ssh\n"
    [digest] = lab.inventory()["containers"]["web"]["layers"]
    assert (remote / "host" / "layers" / digest[len("sha256:"):] / "tree" / "www" / "index.html").read_text() == "over ssh\n"
    lab.cm("host", "destroy", "s1")
