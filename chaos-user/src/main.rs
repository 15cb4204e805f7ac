fn main() {
    std::process::exit(chaos_user::cli::main());
}
