"""The programs Orbit ships, built on the client library (runcontrol.client), and the libraries only programs use
(`kit/`: the data path; `sequences/`: sequence files)."""
