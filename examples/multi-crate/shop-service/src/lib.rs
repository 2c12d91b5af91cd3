//! Example service binaries (`src/bin/`); see `../README.md`.
