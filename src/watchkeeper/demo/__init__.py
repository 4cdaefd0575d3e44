"""``watchkeeper demo``: a small world on loopback and a keeper watching it.

- :mod:`~watchkeeper.demo.world`: a shop (HTML, JSON API, feed), a rotated app log, a flapping port;
- :mod:`~watchkeeper.demo.smtpsink`: an SMTP server that saves what it receives as .eml files
  (the tests receive mail with it too);
- :mod:`~watchkeeper.demo.runner`: builds the keeper, runs it until a signal or a deadline, and
  prints a summary. The CLI calls it; it does not import the CLI.
"""
