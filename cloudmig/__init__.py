"""cloudmig: live-migrate Linux containers between machines and clouds.

    $ cloudmig lab up
    $ cloudmig run h1 db --publish 6379 -- redis-server --protected-mode no
    $ cloudmig migrate db --to h2

The public Python surface is small and listed in ``__all__``; everything else is private.
"""

from cloudmig import errors

__version__ = "0.1.0"

__all__ = ["__version__", "errors"]
