fn main() {
    println!("pipe");
}
