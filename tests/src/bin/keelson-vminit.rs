//! `keelson-vminit`: PID 1 of a VM-tier test guest. All logic is in
//! [`keelson_tests::vm::guest`]; this binary refuses to run unless it is PID 1.

fn main() {
    keelson_tests::vm::guest::init_main()
}
