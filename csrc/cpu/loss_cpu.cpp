// Softmax cross-entropy with its classification error, summed over a minibatch, and
// the gradient of the summed loss, on CPU. One call replaces six small torch operators
// (log_softmax, nll_loss, two argmaxes, a comparison and a sum), whose per-call overhead
// outweighs their arithmetic at a few dozen rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>

#include "../common/checks.h"
#include "../common/ops.h"

namespace seqlstm {
namespace {

void check_loss_args(const at::Tensor& logits, const at::Tensor& labels) {
  check_dim(logits, "logits", 2);
  check_floating(logits, "logits");
  check_device_type(logits, "logits", c10::DeviceType::CPU);
  check_defined(labels, "labels");
  TORCH_CHECK_VALUE(labels.sizes() == logits.sizes(),
                    "labels must have the shape of logits (num_rows, num_classes) = ",
                    shape_string(logits.sizes()), ", got ", shape_string(labels.sizes()));
  check_same_dtype(labels, "labels", logits, "logits");
  check_same_device(labels, "labels", logits, "logits");
  TORCH_CHECK_VALUE(logits.size(1) > 0, "logits must have at least one class, got shape ",
                    shape_string(logits.sizes()));
}

// Index of the first maximum of row[0, count): ties go to the lowest index, as in
// torch.argmax.
template <typename scalar_t>
int64_t first_argmax(const scalar_t* row, int64_t count) {
  int64_t best = 0;
  for (int64_t k = 1; k < count; ++k) {
    if (row[k] > row[best]) {
      best = k;
    }
  }
  return best;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_cpu(const at::Tensor& logits_arg,
                                                             const at::Tensor& labels_arg) {
  check_loss_args(logits_arg, labels_arg);
  const at::Tensor logits = logits_arg.contiguous();
  const at::Tensor labels = labels_arg.contiguous();
  const int64_t num_rows = logits.size(0);
  const int64_t num_classes = logits.size(1);
  at::Tensor loss = at::empty({}, logits.options());
  at::Tensor errors = at::empty({}, logits.options().dtype(at::kLong));

  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "softmax_cross_entropy_cpu", [&] {
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    const scalar_t* y = labels.const_data_ptr<scalar_t>();
    // The sum runs in double, so a float loss is rounded once, at the end.
    double loss_sum = 0.0;
    int64_t error_count = 0;
    for (int64_t n = 0; n < num_rows; ++n) {
      const scalar_t* row = z + n * num_classes;
      const int64_t label = first_argmax(y + n * num_classes, num_classes);
      const int64_t predicted = first_argmax(row, num_classes);
      const double max_logit = row[predicted];
      double exp_sum = 0.0;
      for (int64_t k = 0; k < num_classes; ++k) {
        exp_sum += std::exp(static_cast<double>(row[k]) - max_logit);
      }
      loss_sum += std::log(exp_sum) + max_logit - static_cast<double>(row[label]);
      error_count += predicted != label;
    }
    loss.fill_(static_cast<scalar_t>(loss_sum));
    errors.fill_(error_count);
  });
  return {loss, errors};
}

at::Tensor softmax_cross_entropy_backward_cpu(const at::Tensor& grad_loss_arg,
                                              const at::Tensor& logits_arg,
                                              const at::Tensor& labels_arg) {
  check_loss_args(logits_arg, labels_arg);
  check_dim(grad_loss_arg, "grad_loss", 0);
  check_same_dtype(grad_loss_arg, "grad_loss", logits_arg, "logits");
  check_same_device(grad_loss_arg, "grad_loss", logits_arg, "logits");
  const at::Tensor logits = logits_arg.contiguous();
  const at::Tensor labels = labels_arg.contiguous();
  const int64_t num_rows = logits.size(0);
  const int64_t num_classes = logits.size(1);
  at::Tensor grad_logits = at::empty_like(logits);

  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "softmax_cross_entropy_backward_cpu", [&] {
    const double scale = static_cast<double>(grad_loss_arg.item<scalar_t>());
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    const scalar_t* y = labels.const_data_ptr<scalar_t>();
    scalar_t* grad = grad_logits.data_ptr<scalar_t>();
    // d loss_n / d z_k = softmax(z)_k - [k == label_n] for each row n.
    for (int64_t n = 0; n < num_rows; ++n) {
      const scalar_t* row = z + n * num_classes;
      scalar_t* grad_row = grad + n * num_classes;
      const int64_t label = first_argmax(y + n * num_classes, num_classes);
      const double max_logit = row[first_argmax(row, num_classes)];
      double exp_sum = 0.0;
      for (int64_t k = 0; k < num_classes; ++k) {
        exp_sum += std::exp(static_cast<double>(row[k]) - max_logit);
      }
      for (int64_t k = 0; k < num_classes; ++k) {
        const double softmax = std::exp(static_cast<double>(row[k]) - max_logit) / exp_sum;
        grad_row[k] = static_cast<scalar_t>(scale * (softmax - (k == label ? 1.0 : 0.0)));
      }
    }
  });
  return grad_logits;
}

}  // namespace seqlstm

TORCH_LIBRARY_IMPL(seqlstm, CPU, m) {
  m.impl("softmax_cross_entropy", &seqlstm::softmax_cross_entropy_cpu);
  m.impl("softmax_cross_entropy_backward", &seqlstm::softmax_cross_entropy_backward_cpu);
}
