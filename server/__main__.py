"""``python -m remoteio_server``: the same as the ``remoteio-server`` command."""

from remoteio_server.cli import main

if __name__ == '__main__':
    main()
