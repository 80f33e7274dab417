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

void check_linear_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                       const at::Tensor& labels) {
  check_dim(input, "input", 2);
  check_floating(input, "input");
  check_device_type(input, "input", c10::DeviceType::CPU);
  check_dim(weight, "weight", 2);
  check_same_dtype(weight, "weight", input, "input");
  check_same_device(weight, "weight", input, "input");
  TORCH_CHECK_VALUE(weight.size(1) == input.size(1),
                    "weight must have shape (num_classes, in_features) with in_features = ",
                    input.size(1), ", got ", shape_string(weight.sizes()));
  if (bias.defined()) {
    check_shape(bias, "bias", {weight.size(0)}, "(num_classes,)");
    check_same_dtype(bias, "bias", input, "input");
    check_same_device(bias, "bias", input, "input");
  }
  check_defined(labels, "labels");
  TORCH_CHECK_VALUE(labels.dim() == 2 && labels.size(0) == input.size(0) &&
                        labels.size(1) == weight.size(0),
                    "labels must have shape (num_rows, num_classes) = (", input.size(0), ", ",
                    weight.size(0), "), got ", shape_string(labels.sizes()));
}

// logits = input @ weight^T + bias as a new (N, C) tensor, each sum in double. A loop,
// because at the classifier's sizes a GEMM call costs more than the arithmetic.
at::Tensor linear_logits(const at::Tensor& input, const at::Tensor& weight,
                         const at::Tensor& bias) {
  const int64_t num_rows = input.size(0);
  const int64_t in_features = input.size(1);
  const int64_t num_classes = weight.size(0);
  at::Tensor logits = at::empty({num_rows, num_classes}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "linear_logits", [&] {
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* z = logits.data_ptr<scalar_t>();
    for (int64_t n = 0; n < num_rows; ++n) {
      for (int64_t k = 0; k < num_classes; ++k) {
        double sum = b ? static_cast<double>(b[k]) : 0.0;
        for (int64_t p = 0; p < in_features; ++p) {
          sum += static_cast<double>(x[n * in_features + p]) * w[k * in_features + p];
        }
        z[n * num_classes + k] = static_cast<scalar_t>(sum);
      }
    }
  });
  return logits;
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

std::tuple<at::Tensor, at::Tensor> linear_softmax_cross_entropy_cpu(
    const at::Tensor& input_arg, const at::Tensor& weight_arg,
    const std::optional<at::Tensor>& bias_arg, const at::Tensor& labels_arg) {
  const at::Tensor bias_given = bias_arg.value_or(at::Tensor());
  check_linear_args(input_arg, weight_arg, bias_given, labels_arg);
  const at::Tensor logits = linear_logits(input_arg.contiguous(), weight_arg.contiguous(),
                                          bias_given.defined() ? bias_given.contiguous()
                                                               : at::Tensor());
  return softmax_cross_entropy_cpu(logits, labels_arg);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_softmax_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& input_arg, const at::Tensor& weight_arg,
    const std::optional<at::Tensor>& bias_arg, const at::Tensor& labels_arg) {
  const at::Tensor bias_given = bias_arg.value_or(at::Tensor());
  check_linear_args(input_arg, weight_arg, bias_given, labels_arg);
  const at::Tensor input = input_arg.contiguous();
  const at::Tensor weight = weight_arg.contiguous();
  const at::Tensor bias = bias_given.defined() ? bias_given.contiguous() : at::Tensor();
  // The logits are recomputed rather than saved: N x C x in_features multiply-adds.
  const at::Tensor grad_logits =
      softmax_cross_entropy_backward_cpu(grad_loss, linear_logits(input, weight, bias),
                                         labels_arg);
  const int64_t num_rows = input.size(0);
  const int64_t in_features = input.size(1);
  const int64_t num_classes = weight.size(0);
  at::Tensor grad_input = at::empty_like(input);
  at::Tensor grad_weight = at::empty_like(weight);
  at::Tensor grad_bias = bias.defined() ? at::empty_like(bias) : at::empty({0}, input.options());

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "linear_softmax_cross_entropy_backward_cpu",
                             [&] {
    const scalar_t* dz = grad_logits.const_data_ptr<scalar_t>();
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    scalar_t* dx = grad_input.data_ptr<scalar_t>();
    scalar_t* dw = grad_weight.data_ptr<scalar_t>();
    // grad_input = grad_logits @ weight, grad_weight = grad_logits^T @ input and
    // grad_bias = the column sums of grad_logits, each sum in double.
    for (int64_t n = 0; n < num_rows; ++n) {
      for (int64_t p = 0; p < in_features; ++p) {
        double sum = 0.0;
        for (int64_t k = 0; k < num_classes; ++k) {
          sum += static_cast<double>(dz[n * num_classes + k]) * w[k * in_features + p];
        }
        dx[n * in_features + p] = static_cast<scalar_t>(sum);
      }
    }
    for (int64_t k = 0; k < num_classes; ++k) {
      for (int64_t p = 0; p < in_features; ++p) {
        double sum = 0.0;
        for (int64_t n = 0; n < num_rows; ++n) {
          sum += static_cast<double>(dz[n * num_classes + k]) * x[n * in_features + p];
        }
        dw[k * in_features + p] = static_cast<scalar_t>(sum);
      }
    }
    if (bias.defined()) {
      scalar_t* db = grad_bias.data_ptr<scalar_t>();
      for (int64_t k = 0; k < num_classes; ++k) {
        double sum = 0.0;
        for (int64_t n = 0; n < num_rows; ++n) {
          sum += dz[n * num_classes + k];
        }
        db[k] = static_cast<scalar_t>(sum);
      }
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace seqlstm

TORCH_LIBRARY_IMPL(seqlstm, CPU, m) {
  m.impl("softmax_cross_entropy", &seqlstm::softmax_cross_entropy_cpu);
  m.impl("softmax_cross_entropy_backward", &seqlstm::softmax_cross_entropy_backward_cpu);
  m.impl("linear_softmax_cross_entropy", &seqlstm::linear_softmax_cross_entropy_cpu);
  m.impl("linear_softmax_cross_entropy_backward",
         &seqlstm::linear_softmax_cross_entropy_backward_cpu);
}
