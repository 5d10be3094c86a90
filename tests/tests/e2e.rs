//! Every scenario in every setup: `userspace` (this library's SynIC, TLFS profile),
//! `userspace_kvm_profile` (this library's SynIC with KVM's register semantics) and `kernel`
//! (KVM's in-kernel SynIC, KVM_CAP_HYPERV_SYNIC2). The kernel tests skip loudly without
//! SYNIC2; run them under `/work/shared/tools/kvm-lab/kvm-lab` (see tests/README.md).

use synic_e2e::scenarios::*;
use synic_e2e::Setup;

/// A module per scenario with one test per setup, each calling `scenario(setup)`.
macro_rules! every_setup {
    ($($name:ident => $scenario:path;)*) => {
        $(
            mod $name {
                use super::*;

                fn check(setup: Setup, test: &str) {
                    if setup.available(test) {
                        $scenario(setup);
                    }
                }

                #[test]
                fn userspace() {
                    check(Setup::USERSPACE, concat!(stringify!($name), "::userspace"));
                }

                #[test]
                fn userspace_kvm_profile() {
                    let test = concat!(stringify!($name), "::userspace_kvm_profile");
                    check(Setup::USERSPACE_KVM, test);
                }

                #[test]
                fn kernel() {
                    check(Setup::KERNEL, concat!(stringify!($name), "::kernel"));
                }
            }
        )*
    };
}

every_setup! {
    synic_enable_and_gp_cases => msrs::synic_enable_and_gp_cases;
    vp_index_per_vcpu => msrs::vp_index_per_vcpu;
    message_to_each_of_16_sints => messages::message_to_each_sint;
    busy_slot_redelivers_on_eom => messages::busy_slot_redelivers_on_eom;
    masked_and_polling_sints => messages::masked_and_polling_sints_deliver_without_interrupts;
    simp_disabled_queues_until_enabled => messages::simp_disabled_queues_until_enabled;
    auto_eoi_per_mode => messages::auto_eoi_per_mode;
    nested_delivery_touches_nothing => messages::nested_delivery_touches_nothing;
    event_flags_interrupt_only_on_0_to_1 => events::event_flags_interrupt_only_on_0_to_1;
    cross_vcpu_post_and_signal => hypercalls::cross_vcpu_post_and_signal;
    test_device_protocol => hypercalls::test_device_protocol;
    save_restore_mid_traffic => save_restore::save_restore_mid_traffic;
    pause_save_resume_mid_traffic => save_restore::pause_save_resume_mid_traffic;
    enlightenments_advertised_work_the_rest_faults => enlightenments::advertised_work_and_the_rest_faults;
    overlay_pages_hide_and_give_back_ram => overlays::overlay_pages_hide_and_give_back_ram;
    stale_message_page_is_not_a_wedge => overlays::message_after_enabling_simp_on_a_stale_page_is_delivered;
    reference_tsc_page_agrees_with_time_ref_count => reference_tsc::page_agrees_with_time_ref_count_over_10e5_reads;
    reference_tsc_page_follows_save_and_restore_with_downtime => reference_tsc::page_follows_save_and_restore_with_downtime;
}
