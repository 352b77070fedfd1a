//! mignet: manager, node agent, lab and CLI.
