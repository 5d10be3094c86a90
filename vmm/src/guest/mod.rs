//! Guest toolkit (todo)
