//! Text edits the roles need, built on [`super::FileOps`].
