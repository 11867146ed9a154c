fn main() -> std::process::ExitCode {
    wgprov::cli::main()
}
