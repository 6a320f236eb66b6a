//! status-api: per-user progress over Server-Sent Events. Not built yet (issue 4); this
//! binary only exists so the workspace has its final shape.

fn main() {
    eprintln!("status-api is not implemented yet (see issue 4)");
    std::process::exit(2);
}
