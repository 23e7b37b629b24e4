//! Hand-written pixbox plugin components (WAT), for shapes no Rust plugin has: several linear
//! memories, many tables. The component echoes its input after growing each memory and table by
//! the amounts it was built with, so the sandbox's per-call budget and per-component limits can
//! be tested with real components.

/// What the component does in `transform` before echoing its input.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Linear memories (the first holds the canonical ABI's data).
    pub memories: u32,
    /// Pages (64 KiB) each memory grows by.
    pub grow_pages: u32,
    /// Tables of `funcref`.
    pub tables: u32,
    /// Elements each table grows by.
    pub grow_elements: u32,
}

/// The types of contract 0.1.0 as a component declares and exports them (WAT), for the
/// components below.
const CONTRACT_0_1_TYPES: &str = r#"(type $param' (record (field "name" string) (field "value" string)))
  (export $param "param" (type $param'))
  (type $image' (record (field "bytes" (list u8)) (field "media-type" string)))
  (export $image "image" (type $image'))
  (type $spec' (record (field "name" string) (field "description" string) (field "default" (option string))))
  (export $spec "param-spec" (type $spec'))
  (type $info' (record (field "name" string) (field "version" string) (field "description" string)
                       (field "params" (list $spec))))
  (export $info "plugin-info" (type $info'))
  (type $error' (variant (case "bad-input" string) (case "unsupported" string) (case "internal" string)))
  (export $error "transform-error" (type $error'))"#;

/// The component's binary.
pub fn component(shape: Shape) -> Vec<u8> {
    ::wat::parse_str(component_text(shape)).expect("the test component is valid WAT")
}

fn component_text(shape: Shape) -> String {
    let extra_memories: String = (1..shape.memories).map(|i| format!("(memory $m{i} 0)\n")).collect();
    let tables: String = (0..shape.tables).map(|i| format!("(table $t{i} 0 funcref)\n")).collect();
    let mut grow = String::new();
    for i in 0..shape.memories {
        // memory.grow answers -1 when the host refuses: trap, as a Rust guest's allocator would.
        grow.push_str(&format!(
            "(if (i32.eq (memory.grow {i} (i32.const {})) (i32.const -1)) (then unreachable))\n",
            shape.grow_pages
        ));
        // Touch the last new page so the memory is really used.
        if shape.grow_pages > 0 {
            grow.push_str(&format!(
                "(i32.store8 {i} (i32.sub (i32.mul (memory.size {i}) (i32.const 65536)) (i32.const 1)) (i32.const 1))\n"
            ));
        }
    }
    for i in 0..shape.tables {
        grow.push_str(&format!(
            "(if (i32.eq (table.grow $t{i} (ref.null func) (i32.const {})) (i32.const -1)) (then unreachable))\n",
            shape.grow_elements
        ));
    }
    format!(
        r#"(component
  (core module $m
    (memory (export "memory") 1)
    {extra_memories}
    {tables}
    (global $heap (mut i32) (i32.const 4096))
    (data (i32.const 1024) "wat-shape")
    (data (i32.const 1040) "0.1.0")
    (data (i32.const 1056) "a hand-written test component")
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.xor (i32.sub (local.get 2) (i32.const 1)) (i32.const -1))))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (block $done
        (loop $more
          (br_if $done (i32.le_u (global.get $heap) (i32.mul (memory.size 0) (i32.const 65536))))
          (if (i32.eq (memory.grow 0 (i32.const 1)) (i32.const -1)) (then unreachable))
          (br $more)))
      (local.get $p))
    (func (export "info") (result i32)
      (i32.store (i32.const 512) (i32.const 1024))
      (i32.store (i32.const 516) (i32.const 9))
      (i32.store (i32.const 520) (i32.const 1040))
      (i32.store (i32.const 524) (i32.const 5))
      (i32.store (i32.const 528) (i32.const 1056))
      (i32.store (i32.const 532) (i32.const 29))
      (i32.store (i32.const 536) (i32.const 0))
      (i32.store (i32.const 540) (i32.const 0))
      (i32.const 512))
    (func (export "transform") (param i32 i32 i32 i32 i32 i32) (result i32)
      {grow}
      (i32.store8 (i32.const 256) (i32.const 0))
      (i32.store (i32.const 260) (local.get 0))
      (i32.store (i32.const 264) (local.get 1))
      (i32.store (i32.const 268) (local.get 2))
      (i32.store (i32.const 272) (local.get 3))
      (i32.const 256))
  )
  (core instance $i (instantiate $m))
  {CONTRACT_0_1_TYPES}
  (func $info-f (result $info)
    (canon lift (core func $i "info") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc"))))
  (func $transform-f (param "input" $image) (param "options" (list $param)) (result (result $image (error $error)))
    (canon lift (core func $i "transform") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc"))))
  (export "info" (func $info-f))
  (export "transform" (func $transform-f))
)"#
    )
}

/// A contract-0.1.0 component whose strings are UTF-16 (`string-encoding=utf16` on its
/// `transform` and on its `log` import): `transform` logs a message of `units` code units
/// `logs` times, then fails with an error text of the same `units` code units. Every code unit
/// is U+4141, three bytes in UTF-8, so a host that decodes a whole string holds 3 x `units`
/// bytes for it.
pub fn utf16_chatter(units: u32, logs: u32) -> Vec<u8> {
    // The string lives at 1 MiB, above the heap the host's inputs are written to.
    let at = 1 << 20;
    let bytes = units * 2;
    let pages = (at + bytes).div_ceil(65536) + 1;
    let calls: String =
        (0..logs).map(|_| format!("(call $log (i32.const 3) (i32.const {at}) (i32.const {units}))\n")).collect();
    ::wat::parse_str(format!(
        r#"(component
  (import "pixbox:transform/log@0.1.0" (instance $log-i
    (type $level (enum "trace" "debug" "info" "warn" "error"))
    (export "level" (type $level-e (eq $level)))
    (export "log" (func (param "level" $level-e) (param "message" string)))))
  (alias export $log-i "log" (func $log-f))
  (core module $mem (memory (export "memory") {pages}))
  (core instance $mi (instantiate $mem))
  (core func $log-lowered
    (canon lower (func $log-f) (memory (core memory $mi "memory")) string-encoding=utf16))
  (core module $m
    (import "mem" "memory" (memory 1))
    (import "host" "log" (func $log (param i32 i32 i32)))
    (global $heap (mut i32) (i32.const 4096))
    (data (i32.const 1024) "utf16-chatter")
    (data (i32.const 1040) "0.1.0")
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.xor (i32.sub (local.get 2) (i32.const 1)) (i32.const -1))))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (if (i32.gt_u (global.get $heap) (i32.const {at})) (then unreachable))
      (local.get $p))
    (func (export "info") (result i32)
      (i32.store (i32.const 512) (i32.const 1024))
      (i32.store (i32.const 516) (i32.const 13))
      (i32.store (i32.const 520) (i32.const 1040))
      (i32.store (i32.const 524) (i32.const 5))
      (i32.store (i32.const 528) (i32.const 1024))
      (i32.store (i32.const 532) (i32.const 13))
      (i32.store (i32.const 536) (i32.const 0))
      (i32.store (i32.const 540) (i32.const 0))
      (i32.const 512))
    (func (export "transform") (param i32 i32 i32 i32 i32 i32) (result i32)
      (memory.fill (i32.const {at}) (i32.const 0x41) (i32.const {bytes}))
      {calls}
      ;; result::err(transform-error::internal(the string))
      (i32.store8 (i32.const 256) (i32.const 1))
      (i32.store8 (i32.const 260) (i32.const 2))
      (i32.store (i32.const 264) (i32.const {at}))
      (i32.store (i32.const 268) (i32.const {units}))
      (i32.const 256)))
  (core instance $i (instantiate $m
    (with "mem" (instance $mi))
    (with "host" (instance (export "log" (func $log-lowered))))))
  {CONTRACT_0_1_TYPES}
  (func $info-f (result $info)
    (canon lift (core func $i "info") (memory (core memory $mi "memory")) (realloc (core func $i "cabi_realloc"))))
  (func $transform-f (param "input" $image) (param "options" (list $param)) (result (result $image (error $error)))
    (canon lift (core func $i "transform") (memory (core memory $mi "memory"))
      (realloc (core func $i "cabi_realloc")) string-encoding=utf16))
  (export "info" (func $info-f))
  (export "transform" (func $transform-f))
)"#
    ))
    .expect("the UTF-16 test component is valid WAT")
}
