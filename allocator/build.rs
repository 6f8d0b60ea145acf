// The console's built files are embedded (src/console.rs): rebuild when they change.
fn main() {
    println!("cargo:rerun-if-changed=../console/dist");
}
