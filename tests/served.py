"""A Gradio page served for one test module: on a free 127.0.0.1 port, closed afterwards."""
import socket
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launched(app):
    """Launch ``app`` (a gradio.Blocks) without blocking; yields its URL, closes it on the way out."""
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                           quiet=True, share=False)
    try:
        yield url
    finally:
        app.close()
